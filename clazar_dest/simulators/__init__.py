"""Faithful fakes of the remote systems (Clazar, Salesforce), runnable as real HTTP servers, with faults."""

from django.urls import path

from flows.views import credentials, pages

urlpatterns = [
    path("", pages.dashboard, name="dashboard"),
    path("healthz", pages.healthz, name="healthz"),
    path("nexsets/", pages.nexset_list, name="nexset_list"),
    path("destinations/", pages.destination_list, name="destination_list"),
    path("credentials/", credentials.credential_list, name="credential_list"),
    path("credentials/new/", credentials.credential_new, name="credential_new"),
    path("credentials/<uuid:uuid>/", credentials.credential_edit, name="credential_edit"),
    path("credentials/<uuid:uuid>/test/", credentials.credential_test, name="credential_test"),
    path("credentials/<uuid:uuid>/delete/", credentials.credential_delete, name="credential_delete"),
    path("salesforce/", pages.salesforce, name="salesforce"),
    path("audit/", pages.audit_list, name="audit_list"),
]

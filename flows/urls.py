from django.urls import path

from flows import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("healthz", views.healthz, name="healthz"),
    path("nexsets/", views.nexset_list, name="nexset_list"),
    path("destinations/", views.destination_list, name="destination_list"),
    path("credentials/", views.credential_list, name="credential_list"),
    path("credentials/new/", views.credential_new, name="credential_new"),
    path("credentials/<uuid:uuid>/", views.credential_edit, name="credential_edit"),
    path("credentials/<uuid:uuid>/test/", views.credential_test, name="credential_test"),
    path("credentials/<uuid:uuid>/delete/", views.credential_delete, name="credential_delete"),
    path("salesforce/", views.salesforce, name="salesforce"),
    path("audit/", views.audit_list, name="audit_list"),
]

from django.urls import path

from flows.views import credentials, pages, users

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
    path("users/", users.user_list, name="user_list"),
    path("users/new/", users.user_new, name="user_new"),
    path("users/<int:user_id>/", users.user_edit, name="user_edit"),
    path("profile/", users.profile, name="profile"),
]

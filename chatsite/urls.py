from django.contrib import admin
from django.urls import include, path

from conversations.review import usage_report_view

urlpatterns = [
    path("admin/usage/", usage_report_view, name="usage-report"),  # staff only; before the admin's catch-all
    path("admin/", admin.site.urls),
    path("accounts/", include("conversations.account_urls")),
    path("", include("conversations.urls")),
]

from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/transcript/", views.transcript, name="transcript"),
    path("c/<uuid:conversation_id>/m/<uuid:message_id>/curl/", views.copy_as_curl, name="copy-as-curl"),
    path("settings/", views.save_settings, name="save-settings"),
]

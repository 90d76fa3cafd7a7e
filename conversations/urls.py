from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/transcript/", views.transcript, name="transcript"),
]

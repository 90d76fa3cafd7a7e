from django.urls import path

from . import review, views

urlpatterns = [
    path("", views.home, name="home"),
    path("c/<uuid:conversation_id>/", views.conversation, name="conversation"),
    path("c/<uuid:conversation_id>/transcript/", views.transcript, name="transcript"),
    path("c/<uuid:conversation_id>/m/<uuid:message_id>/curl/", views.copy_as_curl, name="copy-as-curl"),
    path("c/<uuid:conversation_id>/action/", views.conversation_action, name="conversation-action"),
    path("c/<uuid:conversation_id>/export.<str:fmt>", views.export_conversation, name="export"),
    path("conversations/", views.conversation_list, name="conversation-list"),
    path("search/", views.search, name="search"),
    path("import/", views.import_conversation, name="import"),
    path("settings/", views.save_settings, name="save-settings"),
    path("attachments/", views.upload_attachment, name="upload-attachment"),
    path("attachments/<uuid:attachment_id>/", views.attachment_file, name="attachment"),
    path("m/<uuid:message_id>/report/", review.report_message, name="report-message"),
]

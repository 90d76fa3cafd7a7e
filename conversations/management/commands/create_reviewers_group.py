"""Create (or repair) the "Reviewers" group; optionally make people reviewers.

    python manage.py create_reviewers_group
    python manage.py create_reviewers_group --add alice --add bob

Reviewers read conversations, messages, attachments, reports and the
transcript audit in the admin, and change only a conversation's review status
and notes (ConversationAdmin keeps every other field read-only). Running the
command again sets the group's permissions back to exactly these.
"""

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.management import create_permissions
from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

GROUP_NAME = "Reviewers"
PERMISSIONS = (
    "view_conversation",
    "change_conversation",  # review fields only: see ConversationAdmin
    "view_message",
    "view_attachment",
    "view_report",
    "view_transcriptview",
)


def reviewers_group() -> Group:
    """The Reviewers group with exactly PERMISSIONS (idempotent)."""
    create_permissions(apps.get_app_config("conversations"), verbosity=0)  # in case migrate has not run them
    permissions = list(Permission.objects.filter(content_type__app_label="conversations", codename__in=PERMISSIONS))
    missing = set(PERMISSIONS) - {p.codename for p in permissions}
    if missing:
        raise CommandError(f"Missing permissions: {', '.join(sorted(missing))}. Run `manage.py migrate` first.")
    group, _ = Group.objects.get_or_create(name=GROUP_NAME)
    group.permissions.set(permissions)
    return group


class Command(BaseCommand):
    help = 'Create the "Reviewers" group (read conversations, change only review fields); --add makes users reviewers.'

    def add_arguments(self, parser):
        parser.add_argument(
            "--add", action="append", default=[], metavar="USERNAME",
            help="make this user a reviewer: staff (to reach /admin/) and in the group; repeatable",
        )  # fmt: skip

    @transaction.atomic
    def handle(self, *args, add, **options):
        existed = Group.objects.filter(name=GROUP_NAME).exists()
        group = reviewers_group()
        verb = "Updated" if existed else "Created"
        self.stdout.write(f'{verb} the "{GROUP_NAME}" group: {", ".join(PERMISSIONS)}.')
        User = get_user_model()
        for username in add:
            try:
                user = User.objects.get(**{User.USERNAME_FIELD: username})
            except User.DoesNotExist:
                raise CommandError(f"No user named {username!r}.") from None
            if not user.is_staff:
                user.is_staff = True
                user.save(update_fields=["is_staff"])
            user.groups.add(group)
            self.stdout.write(f"{username} is now a reviewer (staff, in {GROUP_NAME}).")

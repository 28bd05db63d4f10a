from django.apps import AppConfig


class DjangoAppConfig(AppConfig):
    name = "djangoapp"
    label = "djangoapp"

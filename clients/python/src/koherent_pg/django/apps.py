from django.apps import AppConfig


class KoherentPgConfig(AppConfig):
    name = "koherent_pg.django"
    label = "koherent_pg"
    verbose_name = "koherent"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from .hook import install

        connection_created.connect(install, dispatch_uid="koherent_pg_install")

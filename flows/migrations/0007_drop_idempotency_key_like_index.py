"""Drop the ``varchar_pattern_ops`` index Django adds on PostgreSQL beside the unique index of
``Delivery.idempotency_key``. It serves only ``LIKE 'prefix%'`` lookups, which nothing makes on a key,
and every new version of a delivery row (planned, claimed, finished) paid an entry in it."""

from django.db import migrations


def _like_index(schema_editor, apps) -> str:
    delivery = apps.get_model("flows", "Delivery")
    column = delivery._meta.get_field("idempotency_key").column
    return schema_editor._create_index_name(delivery._meta.db_table, [column], suffix="_like")


def drop(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        name = schema_editor.quote_name(_like_index(schema_editor, apps))
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


def restore(apps, schema_editor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        delivery = apps.get_model("flows", "Delivery")
        quote = schema_editor.quote_name
        name, table = quote(_like_index(schema_editor, apps)), quote(delivery._meta.db_table)
        column = quote(delivery._meta.get_field("idempotency_key").column)
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} ({column} varchar_pattern_ops)")


class Migration(migrations.Migration):
    dependencies = [
        ("flows", "0006_drop_redundant_fk_indexes"),
    ]

    operations = [migrations.RunPython(drop, restore)]

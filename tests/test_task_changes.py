"""koherent.task_changes: the changes a task made across tracked tables, with or without those of
its subtasks."""

from conftest import mint, write


def test_task_changes_with_subtasks(item):
    item.sql("CREATE TABLE other (k text PRIMARY KEY)")
    item.sql("SELECT koherent.track('other')")
    write(item, "INSERT INTO item (id) VALUES (1)", mint("root"))
    write(item, "INSERT INTO other VALUES ('a')", mint("child", ptk="root", rtk="root"))
    write(item, "UPDATE item SET qty = 3", mint("grandchild", ptk="child", rtk="root"))
    write(item, "INSERT INTO item (id) VALUES (2)", mint("unrelated"))
    assert item.sql("SELECT table_name::text, kind FROM koherent.task_changes('root')") == [("item", "CREATE")]
    assert item.sql("SELECT task_id, table_name::text, kind FROM koherent.task_changes('root', include_subtasks => true)") == [
        ("root", "item", "CREATE"), ("child", "other", "CREATE"), ("grandchild", "item", "UPDATE")]
    assert item.sql("SELECT task_id FROM koherent.task_changes('child', true)") == [("child",), ("grandchild",)]
    assert item.sql("SELECT * FROM koherent.task_changes('nope')") == []

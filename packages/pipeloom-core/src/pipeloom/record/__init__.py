"""The record: what only the single writer thread touches, behind `pipeloom.writer.SQLiteWriter`.

The writer's settings, opening and closing (`_lifecycle`), one batch in one transaction
(`_batch`), the sandbox user handlers run in (`_handlers`), folding a batch of lifecycle
messages into row changes (`_fold`), the SQL that writes them (`_task_sql`), a task's outputs
applied with its ``done`` row (`_atomic`), the handler registry (`_registry`), the 0.0.7 file
upgrade (`_legacy`) and the file and process identity a writer checks (`_fileid`). Nothing
here is public; nothing here imports `pipeloom.pipeline`.
"""

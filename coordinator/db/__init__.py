"""Everything that touches PostgreSQL: the reviewed queries, the pool, the Store, migrations."""

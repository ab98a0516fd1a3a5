"""The labeling web app (paper section 3.4, App. B): people write demonstrations, rate K
responses (Likert 1-7 and metadata flags), rank them with ties, or edit one to make it better.

    instructrl label serve --db sqlite:///labels.db --host 127.0.0.1 --port 8000

Modules: `models` (tables), `db` (engine, SQLite WAL, transactions), `security` (passwords,
sessions, CSRF, login rate limit), `samples` (the import formats), `store` (import, assign,
submit, progress, export: every write is one transaction), `agreement` (inter-labeler
agreement), `forms` (parse and validate submissions), `app` (FastAPI routes), `cli`.
Nothing here imports torch.
"""

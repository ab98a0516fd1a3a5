"""The FastAPI app: server-rendered pages (Jinja2), one small script for ranking, no build step.

Routes
  GET  /login, POST /login, POST /logout
  GET  /            the labeler's queue (admins go to /admin)
  GET  /next        the labeler's next pending task
  GET  /tasks/{id}  a task page (rank, demo or edit); only its own labeler may open it
  POST /tasks/{id}/{rank|demo|edit|skip}
  GET  /admin       counts, progress, agreement, users, import, assign, export
  POST /admin/users, /admin/import, /admin/assign
  GET  /admin/export/{train|heldout}/{rankings|demonstrations}.jsonl

Every POST carries a CSRF token (form field `csrf_token` or header X-CSRF-Token) and, when the
browser sends an Origin header, it must be this site. Labelers get 403 on another labeler's
task and on every admin page. Nothing secret (passwords, session or CSRF tokens) is logged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from instructrl.data.records import FLAGS, Prompt
from instructrl.errors import InputError
from instructrl.label import security, store
from instructrl.label.db import make_engine
from instructrl.label.samples import SampleSet, parse_rows, text_rows

log = logging.getLogger("instructrl.label")
HERE = Path(__file__).parent
MAX_UPLOAD = 50 * 1024 * 1024  # bytes per imported file

FLAG_LABELS = {  # paper Table 3 / App. B wording
    "fails_instruction": "Fails to follow the instruction / task",
    "hallucination": "Makes up facts (hallucination)",
    "inappropriate": "Inappropriate for a customer assistant",
    "sexual": "Contains sexual content",
    "violent": "Contains violent content",
    "denigrates_protected_class": "Denigrates a protected class",
    "harmful_advice": "Encourages or gives harmful advice",
    "moral_judgement": "Expresses a moral judgement",
    "bad_constraint": "Ignores an explicit constraint",
}
assert set(FLAG_LABELS) == set(FLAGS)
LIKERT_HINT = {1: "terrible", 4: "okay", 7: "excellent"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def create_app(db: str = "sqlite:///labels.db", *, secure_cookies: bool = False,
               limiter: security.LoginLimiter | None = None) -> FastAPI:
    """The app for database URL `db` (the schema is created if missing). `secure_cookies`: set
    the Secure flag (serve behind HTTPS)."""
    engine = make_engine(db)
    secret = store.secret(engine)
    limiter = limiter or security.LoginLimiter()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(flag_labels=FLAG_LABELS, flags=FLAGS, likert_hint=LIKERT_HINT)
    app = FastAPI(title="instructrl labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def cookie(resp: Response, name: str, value: str, max_age: int | None) -> None:
        resp.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=secure_cookies, path="/")

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    async def user_of(request: Request) -> store.SessionUser | None:
        token = request.cookies.get(security.SESSION_COOKIE)
        return await run_in_threadpool(store.session_user, engine, token) if token else None

    async def need_user(request: Request, *, admin: bool = False) -> store.SessionUser:
        user = await user_of(request)
        if user is None:
            raise HTTPError(401, "Please log in.")
        if admin and not user.is_admin:
            raise HTTPError(403, "This page is for admins.")
        return user

    def check_origin(request: Request) -> None:
        origin = request.headers.get("origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
            raise HTTPError(403, "Cross-site request refused.")

    async def form_of(request: Request, user: store.SessionUser | None = None,
                      expected: str | None = None) -> dict[str, list[str]]:
        """The form as {name: [values]}, after the CSRF check (files are not allowed here)."""
        check_origin(request)
        form = await request.form()
        out: dict[str, list[str]] = {}
        for k, v in form.multi_items():
            if isinstance(v, UploadFile):
                raise HTTPError(400, f"unexpected file in field {k!r}")
            out.setdefault(k, []).append(v)
        token = (out.get("csrf_token") or [request.headers.get("x-csrf-token")])[0]
        if not security.same(token, expected if expected is not None else user.csrf):
            raise HTTPError(403, "CSRF check failed: reload the page and submit again.")
        return out

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        if exc.status == 401 and request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return page(request, "error.html", exc.status, code=exc.status, message=exc.message,
                    user=None)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException):
        return page(request, "error.html", exc.status_code, code=exc.status_code,
                    message=str(exc.detail), user=None)

    @app.middleware("http")
    async def headers(request: Request, call_next):
        resp = await call_next(request)
        # No inline script or style anywhere: the policy can forbid them.
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "same-origin"
        if not request.url.path.startswith("/static/"):
            resp.headers["Cache-Control"] = "no-store"  # pages hold CSRF tokens and labels
        return resp

    # ------------------------------------------------------------ login

    @app.get("/login")
    async def login_page(request: Request):
        pre = request.cookies.get(security.PRELOGIN_COOKIE) or security.new_token()
        resp = page(request, "login.html", csrf=security.prelogin_csrf(secret, pre), user=None,
                    error=None)
        cookie(resp, security.PRELOGIN_COOKIE, pre, 3600)
        return resp

    @app.post("/login")
    async def login(request: Request):
        pre = request.cookies.get(security.PRELOGIN_COOKIE)
        form = await form_of(request, expected=security.prelogin_csrf(secret, pre) if pre else "")
        name = (form.get("name") or [""])[0].strip()
        password = (form.get("password") or [""])[0]
        client = request.client.host if request.client else "?"
        wait = limiter.retry_after(name, client)
        if wait > 0:
            log.warning("login rate-limited: name=%r client=%s", name, client)
            resp = page(request, "login.html", 429, csrf=security.prelogin_csrf(secret, pre),
                        user=None, error=f"Too many failed logins. Try again in {int(wait) + 1} s.")
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        result = await run_in_threadpool(store.login, engine, name, password)
        if result is None:
            limiter.failed(name, client)
            log.info("login failed: name=%r client=%s", name, client)
            return page(request, "login.html", 401, csrf=security.prelogin_csrf(secret, pre),
                        user=None, error="Wrong name or password.")
        limiter.succeeded(name, client)
        log.info("login: name=%r client=%s", name, client)
        resp = RedirectResponse("/", status_code=303)
        cookie(resp, security.SESSION_COOKIE, result[0], security.SESSION_SECONDS)
        resp.delete_cookie(security.PRELOGIN_COOKIE, path="/")
        return resp

    @app.post("/logout")
    async def logout(request: Request):
        user = await need_user(request)
        await form_of(request, user)
        await run_in_threadpool(store.logout, engine, request.cookies.get(security.SESSION_COOKIE))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(security.SESSION_COOKIE, path="/")
        return resp

    # ------------------------------------------------------------ labeler

    @app.get("/")
    async def home(request: Request):
        user = await need_user(request)
        if user.is_admin:
            return RedirectResponse("/admin", status_code=303)
        q = await run_in_threadpool(store.queue, engine, user)
        return page(request, "queue.html", user=user, queue=q)

    @app.get("/next")
    async def next_task(request: Request):
        user = await need_user(request)
        tid = await run_in_threadpool(store.next_task, engine, user)
        return RedirectResponse(f"/tasks/{tid}" if tid else "/", status_code=303)

    @app.get("/tasks/{task_id}")
    async def task_page(request: Request, task_id: int):
        user = await need_user(request)
        view = await run_in_threadpool(_call, store.task_view, engine, user, task_id)
        cards = [{"idx": r["idx"], "letter": r["letter"], "preview": r["text"][:90]}
                 for r in view["responses"]]
        return page(request, f"{view['kind']}.html", user=user, task=view,
                    cards_json=json.dumps(cards, ensure_ascii=False))

    @app.post("/tasks/{task_id}/{action}")
    async def submit(request: Request, task_id: int, action: str):
        user = await need_user(request)
        if action not in ("rank", "demo", "edit", "skip"):
            raise HTTPError(404, f"unknown action {action!r}")
        form = await form_of(request, user)
        result = await run_in_threadpool(_call, store.submit, engine, user, task_id, action, form)
        log.info("submit: task=%d action=%s labeler=%s result=%s", task_id, action, user.name,
                 result)
        return RedirectResponse("/next", status_code=303)

    # ------------------------------------------------------------ admin

    async def admin_page(request: Request, user, status: int = 200, **msg):
        data = await run_in_threadpool(lambda: {
            "counts": store.counts(engine), "progress": store.progress(engine),
            "agreement": store.agreement_report(engine), "users": store.users(engine)})
        return page(request, "admin.html", status, user=user,
                    **{"message": None, "error": None, **msg}, **data)

    @app.get("/admin")
    async def admin(request: Request):
        user = await need_user(request, admin=True)
        return await admin_page(request, user)

    @app.post("/admin/users")
    async def admin_users(request: Request):
        user = await need_user(request, admin=True)
        form = await form_of(request, user)
        one = lambda k: (form.get(k) or [""])[0]  # noqa: E731
        try:
            await run_in_threadpool(store.create_user, engine, one("name").strip(),
                                    one("password"), one("role") or "labeler",
                                    one("heldout") == "on")
        except InputError as e:
            return await admin_page(request, user, 422, error=str(e))
        log.info("admin %s created user %r", user.name, one("name").strip())
        return await admin_page(request, user, message=f"Created {one('name').strip()!r}.")

    @app.post("/admin/import")
    async def admin_import(request: Request):
        user = await need_user(request, admin=True)
        check_origin(request)
        form = await request.form(max_files=2)
        if not security.same(form.get("csrf_token"), user.csrf):
            raise HTTPError(403, "CSRF check failed: reload the page and submit again.")
        try:
            report = await run_in_threadpool(_import_uploads, engine, form.get("prompts"),
                                             form.get("samples"))
        except InputError as e:
            return await admin_page(request, user, 422, error=str(e))
        return await admin_page(request, user, message=f"Imported. {report}")

    @app.post("/admin/assign")
    async def admin_assign(request: Request):
        user = await need_user(request, admin=True)
        form = await form_of(request, user)
        one = lambda k: (form.get(k) or [""])[0].strip()  # noqa: E731
        try:
            overlap = int(one("overlap") or 1)
            limit = int(one("limit")) if one("limit") else None
        except ValueError:
            return await admin_page(request, user, 422, error="overlap and limit are integers")
        try:
            n = await run_in_threadpool(
                store.assign, engine, one("kind"), form.get("labelers") or None,
                pool=one("pool") or "train", overlap=overlap, split=one("split") or None,
                limit=limit)
        except InputError as e:
            return await admin_page(request, user, 422, error=str(e))
        return await admin_page(request, user, message=f"Assigned {n} new tasks.")

    @app.get("/admin/export/{split}/{name}.jsonl")
    async def admin_export(request: Request, split: str, name: str):
        await need_user(request, admin=True)
        if split not in ("train", "heldout") or name not in ("rankings", "demonstrations"):
            raise HTTPError(404, "no such export")
        records = (await run_in_threadpool(store.export_records, engine))[split][name]
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        fname = f"{name}.jsonl" if split == "train" else f"heldout-{name}.jsonl"
        return Response(body, media_type="application/x-ndjson", headers={
            "Content-Disposition": f'attachment; filename="{fname}"'})

    return app


def _call(fn, *args):
    """Run a store function, turning its exceptions into HTTP answers."""
    try:
        return fn(*args)
    except InputError as e:
        raise HTTPError(422, str(e)) from None
    except store.Forbidden as e:
        raise HTTPError(403, str(e)) from None
    except store.NotFound as e:
        raise HTTPError(404, str(e)) from None
    except store.Conflict as e:
        raise HTTPError(409, str(e)) from None


def _import_uploads(engine, prompts, samples) -> store.ImportReport:
    def text(upload):
        if not isinstance(upload, UploadFile) or not upload.filename:
            return None, None
        raw = upload.file.read(MAX_UPLOAD + 1)  # uploads are spooled to disk, not memory
        if len(raw) > MAX_UPLOAD:
            raise InputError(f"larger than {MAX_UPLOAD >> 20} MiB: import it with "
                             "`instructrl label import`", path=upload.filename)
        try:
            return raw.decode("utf-8"), upload.filename
        except UnicodeDecodeError:
            raise InputError("not UTF-8 text", path=upload.filename) from None

    p_text, p_name = text(prompts)
    s_text, s_name = text(samples)
    if p_text is None and s_text is None:
        raise InputError("choose a prompts file, a samples file, or both")
    p_rows = store.with_source(p_name, parse_rows(text_rows(p_text, p_name), p_name,
                                                  Prompt.from_dict)) if p_text else []
    s_rows = store.with_source(s_name, parse_rows(text_rows(s_text, s_name), s_name,
                                                  SampleSet.from_dict)) if s_text else []
    return store.import_records(engine, p_rows, s_rows)

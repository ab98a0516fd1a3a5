"""The FastAPI app: server-rendered pages (Jinja2), one small script for ranking, no build step.

Routes (every GET also answers HEAD)
  GET  /login, POST /login, POST /logout
  GET  /            the labeler's queue (admins go to /admin)
  GET  /next        the labeler's next pending task
  GET  /tasks/{id}  a task page (rank, demo or edit); only its own labeler may open it
  POST /tasks/{id}/{rank|demo|edit|skip}   -> /next?saved={id}: the next page says it is saved
  GET  /admin       counts, progress, agreement, users, import, assign, export
  POST /admin/users, /admin/import, /admin/assign                   -> 303 to /admin
  POST /admin/users/{name}/{deactivate|activate|password|end-sessions} -> 303 to /admin
  GET  /admin/labels?labeler=NAME&task=ID&page=N   individual labels, newest first
  GET  /admin/export/{train|heldout}/{rankings|demonstrations}.jsonl

Every POST carries a CSRF token (form field `csrf_token` or header X-CSRF-Token) and, when the
browser sends an Origin header, it must be this site. Labelers get 403 on another labeler's
task and on every admin page. Request bodies are capped before they are read (FORM_BODY_LIMIT,
IMPORT_BODY_LIMIT: 413). Nothing secret (passwords, session or CSRF tokens) is logged.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
import re
from datetime import datetime, timezone
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
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
# Request bodies, checked before they are read. A form's longest field is 20,000 characters
# (forms.MAX_TEXT), at most 12 bytes each once UTF-8 and percent-encoded: 240,000 bytes.
FORM_BODY_LIMIT = 256 * 1024
IMPORT_BODY_LIMIT = 2 * MAX_UPLOAD + 1024 * 1024  # two files and the form around them
MAX_ID = 2**31 - 1  # task ids are 32-bit INTEGER columns on PostgreSQL
LABELS_PER_PAGE = 50

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
    the Secure flag on cookies (served behind HTTPS); they get it anyway on a request that
    arrives as https (directly, or as X-Forwarded-Proto from a trusted proxy)."""
    engine = make_engine(db)
    secret = store.secret(engine)
    limiter = limiter or security.LoginLimiter()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals.update(flag_labels=FLAG_LABELS, flags=FLAGS, likert_hint=LIKERT_HINT)
    templates.env.filters["when"] = lambda t: datetime.fromtimestamp(t, timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    app = FastAPI(title="instructrl labeling", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine = engine
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def cookie(request: Request, resp: Response, name: str, value: str,
               max_age: int | None) -> None:
        resp.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=secure_cookies or request.url.scheme == "https", path="/")

    def page(request: Request, name: str, status: int = 200, **ctx) -> HTMLResponse:
        ctx = {"note": None, "alert": None, **ctx}
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
        """The form as {name: [values]}, after the CSRF check. No files (400); the body is
        capped by the request guard."""
        check_origin(request)
        try:
            form = await request.form(max_files=0, max_fields=500,
                                      max_part_size=FORM_BODY_LIMIT)
        except StarletteHTTPException as e:  # Starlette's multipart limits: 400
            raise HTTPError(400, "This form takes no file uploads." if "files" in str(e.detail)
                            else f"Malformed form data: {e.detail}") from None
        out: dict[str, list[str]] = {}
        for k, v in form.multi_items():
            out.setdefault(k, []).append(v)
        token = (out.get("csrf_token") or [request.headers.get("x-csrf-token")])[0]
        if not security.same(token, expected if expected is not None else user.csrf):
            raise HTTPError(403, "CSRF check failed: reload the page and submit again.")
        for k, values in out.items():
            # PostgreSQL cannot store U+0000; no field has a use for it.
            if "\x00" in k or any("\x00" in v for v in values):
                raise HTTPError(422, f"field {k.replace(chr(0), '?')!r}: contains a NUL "
                                     "character (U+0000)")
        return out

    async def error_page(request: Request, status: int, message: str) -> HTMLResponse:
        try:  # the navigation stays on error pages
            user = await user_of(request)
        except Exception:  # noqa: BLE001 - e.g. the database is down: a page without it
            user = None
        return page(request, "error.html", status, code=status, message=message, user=user)

    async def guard_page(scope, status: int, message: str) -> HTMLResponse:
        return await error_page(Request(scope), status, message)

    app.add_middleware(security.RequestGuard, render=guard_page,
                       limit_for=lambda path: IMPORT_BODY_LIMIT if path == "/admin/import"
                       else FORM_BODY_LIMIT)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError):
        if exc.status == 401 and request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return await error_page(request, exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException):
        message = {404: "No such page.", 405: "This address does not take that method."}.get(
            exc.status_code, str(exc.detail))
        return await error_page(request, exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return await error_page(request, 422, "Malformed request.")

    # ------------------------------------------------------------ notes after a redirect

    def note_url(user: store.SessionUser, path: str, text: str) -> str:
        """`path` with a note for the next page, signed for this session so that a link from
        elsewhere cannot put words on the admin's page."""
        return f"{path}?{urlencode({'note': text, 'sig': _sign(secret, user, text)})}"

    def note_of(request: Request, user: store.SessionUser) -> str | None:
        text = request.query_params.get("note")
        ok = text and security.same(request.query_params.get("sig"), _sign(secret, user, text))
        return text if ok else None

    async def saved_of(request: Request, user: store.SessionUser) -> str | None:
        """"Saved task #N." after a submission (/next?saved=N), if N is the user's and done."""
        tid = _id_or_none(request.query_params.get("saved"))
        if tid is None:
            return None
        state = await run_in_threadpool(store.task_state, engine, user, tid)
        return {"done": f"Saved task #{tid}.", "skipped": f"Skipped task #{tid}; saved."}.get(
            state)

    # ------------------------------------------------------------ login

    @app.get("/login")
    async def login_page(request: Request):
        pre = request.cookies.get(security.PRELOGIN_COOKIE) or security.new_token()
        resp = page(request, "login.html", csrf=security.prelogin_csrf(secret, pre), user=None,
                    error=None)
        cookie(request, resp, security.PRELOGIN_COOKIE, pre, 3600)
        return resp

    @app.post("/login")
    async def login(request: Request):
        pre = request.cookies.get(security.PRELOGIN_COOKIE)
        form = await form_of(request, expected=security.prelogin_csrf(secret, pre) if pre else "")
        name = (form.get("name") or [""])[0].strip()
        password = (form.get("password") or [""])[0]
        client = request.client.host if request.client else "?"
        wait, slot = limiter.attempt(name, client)
        if slot is None:
            log.warning("login rate-limited: name=%r client=%s", name, client)
            resp = page(request, "login.html", 429, csrf=security.prelogin_csrf(secret, pre),
                        user=None, error=f"Too many failed logins. Try again in {int(wait) + 1} s.")
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        result = await run_in_threadpool(store.login, engine, name, password)
        if result is None:  # the slot stays: a failure
            log.info("login failed: name=%r client=%s", name, client)
            return page(request, "login.html", 401, csrf=security.prelogin_csrf(secret, pre),
                        user=None, error="Wrong name or password.")
        limiter.succeeded(name, client, slot)
        log.info("login: name=%r client=%s", name, client)
        resp = RedirectResponse("/", status_code=303)
        cookie(request, resp, security.SESSION_COOKIE, result[0], security.SESSION_SECONDS)
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
        return page(request, "queue.html", user=user, queue=q, note=await saved_of(request, user))

    @app.get("/next")
    async def next_task(request: Request):
        user = await need_user(request)
        tid = await run_in_threadpool(store.next_task, engine, user)
        saved = _id_or_none(request.query_params.get("saved"))
        query = f"?saved={saved}" if saved is not None else ""
        return RedirectResponse((f"/tasks/{tid}" if tid else "/") + query, status_code=303)

    @app.get("/tasks/{task_id}")
    async def task_page(request: Request, task_id: str):
        user = await need_user(request)
        tid = _task_id(task_id)
        view = await run_in_threadpool(_call, store.task_view, engine, user, tid)
        cards = [{"idx": r["idx"], "letter": r["letter"], "preview": r["text"][:90]}
                 for r in view["responses"]]
        return page(request, f"{view['kind']}.html", user=user, task=view,
                    cards_json=json.dumps(cards, ensure_ascii=False),
                    note=await saved_of(request, user))

    @app.post("/tasks/{task_id}/{action}")
    async def submit(request: Request, task_id: str, action: str):
        user = await need_user(request)
        tid = _task_id(task_id)
        if action not in ("rank", "demo", "edit", "skip"):
            raise HTTPError(404, f"unknown action {action!r}")
        form = await form_of(request, user)
        result = await run_in_threadpool(_call, store.submit, engine, user, tid, action, form)
        log.info("submit: task=%d action=%s labeler=%s result=%s", tid, action, user.name,
                 result)
        return RedirectResponse(f"/next?saved={tid}", status_code=303)

    # ------------------------------------------------------------ admin

    async def admin_page(request: Request, user, status: int = 200, **msg):
        data = await run_in_threadpool(lambda: {
            "counts": store.counts(engine), "progress": store.progress(engine),
            "agreement": store.agreement_report(engine), "users": store.users(engine)})
        return page(request, "admin.html", status, user=user, **msg, **data)

    def done(user, text: str) -> RedirectResponse:
        # Post/Redirect/Get: a reload of the page that follows repeats nothing.
        return RedirectResponse(note_url(user, "/admin", text), status_code=303)

    @app.get("/admin")
    async def admin(request: Request):
        user = await need_user(request, admin=True)
        return await admin_page(request, user, note=note_of(request, user))

    @app.post("/admin/users")
    async def admin_users(request: Request):
        user = await need_user(request, admin=True)
        form = await form_of(request, user)
        one = lambda k: (form.get(k) or [""])[0]  # noqa: E731
        name = one("name").strip()
        try:
            await run_in_threadpool(store.create_user, engine, name, one("password"),
                                    one("role") or "labeler", one("heldout") == "on")
        except InputError as e:
            return await admin_page(request, user, 422, alert=str(e))
        log.info("admin %s created user %r", user.name, name)
        return done(user, f"Created {name!r}.")

    @app.post("/admin/users/{name}/{action}")
    async def admin_account(request: Request, name: str, action: str):
        user = await need_user(request, admin=True)
        if action not in ("deactivate", "activate", "password", "end-sessions"):
            raise HTTPError(404, f"unknown action {action!r}")
        form = await form_of(request, user)
        try:
            if action in ("deactivate", "activate"):
                if name == user.name and action == "deactivate":
                    raise InputError("you cannot deactivate your own account", field="name")
                n = await run_in_threadpool(store.set_active, engine, name, action == "activate")
                text = f"Activated {name!r}." if action == "activate" else \
                    f"Deactivated {name!r}; {n} session(s) ended."
            elif action == "password":
                n = await run_in_threadpool(store.set_password, engine, name,
                                            (form.get("password") or [""])[0])
                text = f"New password for {name!r}; {n} session(s) ended."
            else:
                n = await run_in_threadpool(store.end_sessions, engine, name)
                text = f"Ended {n} session(s) of {name!r}."
        except InputError as e:
            return await admin_page(request, user, 422, alert=str(e))
        log.info("admin %s: %s %r", user.name, action, name)
        return done(user, text)

    @app.post("/admin/import")
    async def admin_import(request: Request):
        user = await need_user(request, admin=True)  # before the body is read
        check_origin(request)
        async with request.form(max_files=2, max_fields=10) as form:
            if not security.same(form.get("csrf_token"), user.csrf):
                raise HTTPError(403, "CSRF check failed: reload the page and submit again.")
            try:
                report = await run_in_threadpool(_import_uploads, engine, form.get("prompts"),
                                                 form.get("samples"))
            except InputError as e:
                return await admin_page(request, user, 422, alert=str(e))
        return done(user, f"Imported. {report}")

    @app.post("/admin/assign")
    async def admin_assign(request: Request):
        user = await need_user(request, admin=True)
        form = await form_of(request, user)
        one = lambda k: (form.get(k) or [""])[0].strip()  # noqa: E731
        try:
            overlap = _int(one("overlap") or "1", "overlap")
            limit = _int(one("limit"), "limit") if one("limit") else None
            n = await run_in_threadpool(
                store.assign, engine, one("kind"), form.get("labelers") or None,
                pool=one("pool") or None, overlap=overlap, split=one("split") or None,
                limit=limit)
        except InputError as e:
            return await admin_page(request, user, 422, alert=str(e))
        return done(user, f"Assigned {n} new tasks.")

    @app.get("/admin/labels")
    async def admin_labels(request: Request):
        user = await need_user(request, admin=True)
        qp = request.query_params
        labeler = qp.get("labeler", "").strip() or None
        raw_task = qp.get("task", "").strip()
        task_id = _id_or_none(raw_task)
        page_no = _id_or_none(qp.get("page", "1")) or 1
        if raw_task and task_id is None:
            raise HTTPError(422, f"task: not a task number: {raw_task[:40]!r}")
        if labeler and not store.is_name(labeler):
            raise HTTPError(422, f"labeler: not a user name: {labeler[:40]!r}")
        rows, total = await run_in_threadpool(
            lambda: store.labels(engine, labeler=labeler, task_id=task_id,
                                 offset=(page_no - 1) * LABELS_PER_PAGE,
                                 limit=LABELS_PER_PAGE))
        users = await run_in_threadpool(store.users, engine)
        pages = max(1, -(-total // LABELS_PER_PAGE))

        def link(n: int) -> str:
            q = {k: v for k, v in (("labeler", labeler), ("task", raw_task)) if v}
            return "/admin/labels?" + urlencode({**q, "page": n})

        return page(request, "labels.html", user=user, labels=rows, total=total,
                    labeler=labeler, task=raw_task, users=users, page_no=page_no, pages=pages,
                    prev_url=link(page_no - 1) if page_no > 1 else None,
                    next_url=link(page_no + 1) if page_no < pages else None)

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


def _sign(secret: str, user: store.SessionUser, text: str) -> str:
    return security.prelogin_csrf(secret, f"note:{user.csrf}:{text}")


def _id_or_none(raw: str | None) -> int | None:
    """A positive id that fits the database's INTEGER column, else None."""
    if raw is None or not re.fullmatch(r"[0-9]{1,10}", raw):
        return None
    n = int(raw)
    return n if 0 < n <= MAX_ID else None


def _task_id(raw: str) -> int:
    tid = _id_or_none(raw)
    if tid is None:  # "abc", 2**70: no such task, not a 500 from the database driver
        raise HTTPError(404, f"no task {raw[:40]!r}")
    return tid


def _int(raw: str, field: str) -> int:
    if not re.fullmatch(r"-?[0-9]{1,9}", raw):
        raise InputError(f"not an integer: {raw[:40]!r}", field=field)
    return int(raw)


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
        raw = upload.file.read(MAX_UPLOAD + 1)  # spooled to disk; the body is capped
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

"""The operator dashboard at ``/dashboard``: server-rendered HTML (Jinja2), a local chart script, no CDN.

Sign in with a named operator account (``qflare operator add``; scrypt-hashed passwords) or the operator
token. Failed sign-ins answer 401, and 429 once an address or a name has used up its failures. The
session is a random id in a cookie (HttpOnly, SameSite=Strict, Secure over HTTPS, Path=/dashboard) that
maps to the operator server-side; a URL cannot carry it. A device identity (a sealed device request)
is refused with 403.

Each view also verifies what it shows (:mod:`qflare.server.checks`): a fresh enclave quote, the ledger's
latest checkpoint and the QKD link's QBER, each ``verified``, ``failed [reason]: why`` or ``absent``.
"""

from __future__ import annotations

import datetime as dt
import hmac
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from qflare.errors import AuthenticationError, PermissionDenied, QFlareError, RateLimited
from qflare.server import services
from qflare.server.operators import LoginLimiter, OperatorAccounts, Session, SessionStore
from qflare.server.state import ServerState

__all__ = ["Dashboard", "install_dashboard"]

COOKIE = "qflare_session"
STATIC = {"chart.js": "text/javascript", "dashboard.css": "text/css"}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
ENVELOPE_TYPES = ("application/vnd.qflare",)


def _when(ts: float | None) -> str:
    return "-" if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt(metrics: dict[str, Any] | None, key: str) -> str:
    v = (metrics or {}).get(key)
    return f"{v:.4f}" if isinstance(v, float) else ("-" if v is None else str(v))


class Dashboard:
    """The dashboard's state: accounts, sign-in throttle, sessions, templates."""

    def __init__(self, state: ServerState, accounts: OperatorAccounts | None = None, *,
                 limiter: LoginLimiter | None = None, sessions: SessionStore | None = None) -> None:
        self.state = state
        self.accounts = accounts
        self.limiter = limiter or LoginLimiter()
        self.sessions = sessions or SessionStore()
        self.env = Environment(loader=PackageLoader("qflare.server.dashboard", "templates"),
                               autoescape=select_autoescape(["html"]))
        self.env.globals.update(when=_when, fmt=_fmt)

    def render(self, name: str, status: int = 200, session: Session | None = None, **ctx: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(operator=session.operator if session else None,
                                                  csrf=session.csrf if session else "", **ctx)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def sign_in(self, client: str, form: dict[str, str]) -> str:
        """The operator's name for a valid sign-in; :class:`RateLimited` or :class:`AuthenticationError`."""
        name, password, token = form.get("name", "").strip(), form.get("password", ""), form.get("token", "")
        keys = (f"addr:{client}",) + ((f"name:{name}",) if name else ())
        self.limiter.check(*keys)
        try:
            if token:
                if not hmac.compare_digest(token.encode(), self.state.admin_token.encode()):
                    raise AuthenticationError("wrong operator token", reason="bad_credentials")
                return "operator-token"
            if self.accounts is None or not name:
                raise AuthenticationError("wrong operator name or password", reason="bad_credentials")
            self.accounts.verify(name, password)
            return name
        except AuthenticationError:
            self.limiter.failed(*keys)
            raise

    def series(self, view: services.DashboardView) -> dict[str, Any]:
        metric = view.status.metric
        done = [(r.round_id, r.metrics) for r in view.rounds if r.status == "aggregated" and r.metrics]
        times = view.refusal_times
        refusals: list[list[float]] = []
        if times:
            start, end = times[0][0], times[-1][0]
            width = max((end - start) / 20, 1.0)
            buckets: dict[int, int] = {}
            for ts, _ in times:
                buckets[int((ts - start) // width)] = buckets.get(int((ts - start) // width), 0) + 1
            refusals = [[round(i * width / 60, 2), float(n)] for i, n in sorted(buckets.items())]
        return {
            "metric": [[rid, m[metric]] for rid, m in done if isinstance(m.get(metric), float)],
            "loss": [[rid, m["loss"]] for rid, m in done if isinstance(m.get("loss"), float)],
            "refusals": refusals,
            "xlabel": {"metric": "round", "loss": "round", "refusals": "minutes since the first refusal"},
        }


def _qkd_bits_fetched(request: Request) -> int | None:
    """QKD key bits the server fetched from its KME since it started (``/metrics``' counter)."""
    metrics = getattr(request.app.state, "metrics", None)
    value = metrics.registry.get_sample_value("qflare_qkd_key_bits_total") if metrics is not None else None
    return None if value is None else int(value)


def _device_envelope(request: Request) -> bool:
    return request.headers.get("content-type", "").startswith(ENVELOPE_TYPES)


def install_dashboard(app: FastAPI, state: ServerState, accounts: OperatorAccounts | None = None) -> Dashboard:
    dash = Dashboard(state, accounts)
    router = APIRouter(prefix="/dashboard", include_in_schema=False)

    def current(request: Request) -> tuple[str | None, Session | None]:
        sid = request.cookies.get(COOKIE)
        return sid, dash.sessions.get(sid)

    async def refuse_devices(request: Request) -> None:
        # A device's sealed request is an identity, and a device is not an operator: 403 if it verifies.
        if _device_envelope(request):
            from qflare.server.gateway import request_target

            body = await request.body()
            try:
                await run_in_threadpool(state.gateway.authenticate, body, method=request.method,
                                        target=request_target(request), round_id=None, now=state.clock(),
                                        max_size=state.config.server.max_request_bytes, update=False)
            except QFlareError:
                raise AuthenticationError("not an operator", reason="operator_auth") from None
            raise PermissionDenied("a device identity cannot open the operator dashboard", reason="not_an_operator")

    @router.get("", response_class=HTMLResponse)
    async def index(request: Request) -> Response:
        await refuse_devices(request)
        _, session = current(request)
        if session is None:
            return RedirectResponse("/dashboard/login", status_code=303, headers=SECURITY_HEADERS)
        view = await run_in_threadpool(services.dashboard_view, state)
        return dash.render("dashboard.html", session=session, title="dashboard", view=view, series=dash.series(view),
                           qkd_bits=_qkd_bits_fetched(request))

    @router.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        await refuse_devices(request)
        return dash.render("login.html", title="sign in", error=None)

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request) -> Response:
        await refuse_devices(request)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        client = request.client.host if request.client else "?"
        try:
            operator = await run_in_threadpool(dash.sign_in, client, form)
        except RateLimited as exc:
            resp = dash.render("login.html", status=429, title="sign in", error=exc.message)
            resp.headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
            return resp
        except AuthenticationError as exc:
            return dash.render("login.html", status=401, title="sign in", error=exc.message)
        sid, _ = dash.sessions.create(operator)
        done = RedirectResponse("/dashboard", status_code=303, headers=SECURITY_HEADERS)
        done.set_cookie(COOKIE, sid, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        path="/dashboard", max_age=int(dash.sessions.ttl))
        return done

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        sid, session = current(request)
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode(errors="replace")).items()}
        if session is not None and hmac.compare_digest(form.get("csrf", ""), session.csrf):
            dash.sessions.end(sid)
        resp = RedirectResponse("/dashboard/login", status_code=303, headers=SECURITY_HEADERS)
        resp.delete_cookie(COOKIE, path="/dashboard")
        return resp

    @router.get("/static/{name}")
    def static(name: str) -> Response:
        if name not in STATIC:
            return Response(status_code=404)
        data = resources.files("qflare.server.dashboard").joinpath("static", name).read_bytes()
        return Response(data, media_type=STATIC[name], headers={"X-Content-Type-Options": "nosniff"})

    app.include_router(router)
    app.state.dashboard = dash
    return dash

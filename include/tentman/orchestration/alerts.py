"""Failure alerts of the billing DAGs, through Airflow's notifier mechanism.

Two channels, each switched on by an Airflow connection and off when it is not defined:
- e-mail through the SMTP provider: connection `tentman_alert_smtp` (host, port, login, password;
  extras `to` — comma-separated recipients — and `from_email`, plus the SMTP provider's own
  extras such as `disable_tls` / `disable_ssl`);
- a generic JSON webhook, Slack-compatible (the payload has a `text` field): connection
  `tentman_alert_webhook`, whose URI is the webhook address (or extra `url`).

Imported by the DAG files at parse time: only `airflow.sdk` and tentman.names at module level.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from html import escape

from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException

from tentman.names import BILL_ORGANIZATION_TASK, RESOLVE_PERIOD_TASK

SMTP_CONN_ID = "tentman_alert_smtp"
WEBHOOK_CONN_ID = "tentman_alert_webhook"

log = logging.getLogger(__name__)


def alert_connection(conn_id: str):
    """The Airflow connection of an alert channel, or None: the channel is off."""
    from airflow.sdk import Connection

    try:
        return Connection.get(conn_id)
    except Exception:  # not defined: this channel is off
        return None


def describe_failure(context) -> dict:
    """What failed: DAG, billing period, organization(s) and error, from a task's failure context."""
    ti = context["ti"]
    dag_id = context["dag"].dag_id
    # An organization task names its own period (the schedules DAG bills each with its own);
    # otherwise the run's, from its first task.
    period = context.get("billing_period")
    try:
        run = None if period else ti.xcom_pull(task_ids=RESOLVE_PERIOD_TASK)
        if run:
            period = run["billing_period_start"][:7]
    except Exception:  # the period may be what failed
        log.debug("No billing period to report", exc_info=True)
    exception = context.get("exception")
    cause = getattr(exception, "__cause__", None)
    organizations = list(getattr(cause, "organizations", None) or [])
    if not organizations and ti.task_id == BILL_ORGANIZATION_TASK:
        label = context.get("organization_label") or getattr(ti, "rendered_map_index", None)
        organizations = [label or f"map index {ti.map_index}"]
    # A database error's text carries its statement and parameters: the operator's sentence only.
    if exception is None:
        error = "unknown error (see the task log)"
    elif getattr(exception, "orig", None) is not None:
        from tentman.errors import describe_error

        error = describe_error(exception)
    else:
        error = str(exception)
    text = (
        f"TentMan billing failed: DAG {dag_id}, billing period {period or 'unresolved'}, "
        f"organization(s): {', '.join(organizations) if organizations else 'none (run level)'}. "
        f"Task {ti.task_id}, run {context['run_id']}. Error: {error}"
    )
    return {
        "text": text,
        "dag_id": dag_id,
        "run_id": context["run_id"],
        "task_id": ti.task_id,
        "billing_period": period,
        "organizations": organizations,
        "error": error,
    }


class AlreadyAlerted(AirflowFailException):
    """Fails a task whose failure another task's alert already reported (the run's last task failing
    only so that the run shows as failed): no second alert."""


class BillingFailureNotifier(BaseNotifier):
    """Sends a billing failure to every configured channel; a failing channel never hides another."""

    template_fields = ()

    def __init__(self, smtp_conn_id: str = SMTP_CONN_ID, webhook_conn_id: str = WEBHOOK_CONN_ID):
        super().__init__()
        self.smtp_conn_id = smtp_conn_id
        self.webhook_conn_id = webhook_conn_id

    def notify(self, context) -> None:
        if isinstance(context.get("exception"), AlreadyAlerted):
            log.info("Not alerting again: %s", context["exception"])
            return
        alert = describe_failure(context)
        log.error("%s", alert["text"])
        for channel, send in (("e-mail", self._send_email), ("webhook", self._send_webhook)):
            try:
                send(alert, context)
            except Exception:
                log.exception("Could not send the billing alert by %s", channel)

    def _send_email(self, alert: dict, context) -> None:
        conn = alert_connection(self.smtp_conn_id)
        if conn is None:
            return
        recipients = [r.strip() for r in str(conn.extra_dejson.get("to", "")).split(",") if r.strip()]
        if not recipients:
            log.warning("Connection %s has no `to` extra: no alert e-mail sent", self.smtp_conn_id)
            return
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        subject = f"[TentMan billing] {alert['dag_id']} failed for {alert['billing_period'] or 'an unresolved period'}"
        body = "".join(
            f"<p><b>{escape(label)}</b>: {escape(str(value))}</p>"
            for label, value in (
                ("DAG", alert["dag_id"]),
                ("Billing period", alert["billing_period"] or "unresolved"),
                ("Organization(s)", ", ".join(alert["organizations"]) or "none (run level)"),
                ("Task", alert["task_id"]),
                ("Run", alert["run_id"]),
                ("Error", alert["error"]),
            )
        )
        SmtpNotifier(
            to=recipients,
            from_email=conn.extra_dejson.get("from_email") or "tentman-billing@localhost",
            subject=subject,
            html_content=body,
            smtp_conn_id=self.smtp_conn_id,
        ).notify(context)

    def _send_webhook(self, alert: dict, context) -> None:
        conn = alert_connection(self.webhook_conn_id)
        if conn is None:
            return
        url = conn.extra_dejson.get("url") or _webhook_url(conn)
        request = urllib.request.Request(
            url,
            data=json.dumps(webhook_payload(alert)).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()


# Slack and the webhooks modelled on it read `<…>` as a mention or a link and `&` as an entity; an
# organization's name, a hold reason or a currency is tenants' text, so an alert escapes all three
# (Slack's own rule) and caps each text: a name like "<!channel> <https://evil.example|Sign in>"
# reaches the channel as the characters it is.
WEBHOOK_TEXT_LIMIT = 3000


def webhook_text(text: str, limit: int = WEBHOOK_TEXT_LIMIT) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_payload(alert: dict) -> dict:
    """The alert as the webhook receives it: every text escaped and capped (webhook_text)."""
    return {
        key: webhook_text(value)
        if isinstance(value, str)
        else [webhook_text(v) if isinstance(v, str) else v for v in value]
        if isinstance(value, list)
        else value
        for key, value in alert.items()
    }


def _webhook_url(conn) -> str:
    scheme = conn.conn_type if conn.conn_type in ("http", "https") else "https"
    port = f":{conn.port}" if conn.port else ""
    path = f"/{conn.schema}" if conn.schema else ""
    return f"{scheme}://{conn.host}{port}{path}"

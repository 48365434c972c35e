"""Local SMTP and HTTP sinks for alert tests: they record what they receive, on 127.0.0.1 only."""

from __future__ import annotations

import json
import socketserver
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer


class SmtpSink(socketserver.ThreadingTCPServer):
    """Just enough SMTP for smtplib: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self):
        self.messages: list[dict] = []
        super().__init__(("127.0.0.1", 0), _SmtpHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _SmtpHandler(socketserver.StreamRequestHandler):
    def reply(self, line: str) -> None:
        self.wfile.write((line + "\r\n").encode())

    def handle(self) -> None:
        self.reply("220 sink ESMTP")
        message = {"from": None, "to": [], "data": ""}
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            command = raw.decode(errors="replace").strip()
            verb = command.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250 sink")
            elif verb == "MAIL":
                message["from"] = command.split(":", 1)[1].strip()
                self.reply("250 OK")
            elif verb == "RCPT":
                message["to"].append(command.split(":", 1)[1].strip())
                self.reply("250 OK")
            elif verb == "DATA":
                self.reply("354 go ahead")
                lines = []
                while (line := self.rfile.readline().decode(errors="replace")) not in (".\r\n", ".\n", ""):
                    lines.append(line)
                message["data"] = "".join(lines)
                self.server.messages.append(message)
                message = {"from": None, "to": [], "data": ""}
                self.reply("250 queued")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:  # RSET, NOOP, anything else
                self.reply("250 OK")


class HttpSink(HTTPServer):
    """Records JSON bodies POSTed to it."""

    def __init__(self):
        self.requests: list[dict] = []
        super().__init__(("127.0.0.1", 0), _HttpHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server_address[1]


class _HttpHandler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.requests.append({"path": self.path, "json": json.loads(body or b"null")})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass

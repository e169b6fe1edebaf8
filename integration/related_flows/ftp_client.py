"""Scripted FTP client of the related-flows lab (Python's ftplib).

Usage: ftp_client.py SERVER passive|active FILE1 FILE2

Logs in anonymously, sends the command that makes the firewall's FTP helper
create an expectation (PASV, or PORT with a listening socket of its own),
prints "PENDING ctrl_sport=N data_port=N" and holds the data connection back
until it reads "GO" on stdin. Then it transfers FILE1 over that data
connection, prints "DATA1 len=N sha256=HEX", does a second transfer (FILE2,
same mode, same control connection: a new expectation on whichever firewall
now forwards it), prints "DATA2 ...", sends QUIT and prints "QUIT ok".
On any failure it prints "ERROR stage=STAGE what=TEXT" and exits 1; when
the first passive data connection fails it first tries NOOP on the control
connection and prints "CONTROL ok" or "CONTROL failed". Every
socket operation has a timeout.
"""

import ftplib
import hashlib
import socket
import sys

CONTROL_TIMEOUT = 15.0
DATA_TIMEOUT = 5.0


def out(line):
    print(line, flush=True)


def prepare(ftp, mode):
    """Send PASV or PORT; returns what transfer() needs and the data port."""
    if mode == "passive":
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        return ("passive", (host, port)), port
    local = ftp.sock.getsockname()[0]
    listener = socket.create_server((local, 0), backlog=1)
    listener.settimeout(DATA_TIMEOUT)
    port = listener.getsockname()[1]
    ftp.sendport(local, port)
    return ("active", listener), port


def transfer(ftp, prepared, name):
    kind, what = prepared
    if kind == "passive":
        conn = socket.create_connection(what, timeout=DATA_TIMEOUT)
        resp = ftp.sendcmd("RETR " + name)
    else:
        resp = ftp.sendcmd("RETR " + name)
        try:
            conn, _ = what.accept()
        finally:
            what.close()
    if not resp.startswith("1"):
        raise RuntimeError("RETR answered " + resp)
    conn.settimeout(DATA_TIMEOUT)
    chunks = []
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    conn.close()
    ftp.voidresp()
    return b"".join(chunks)


def report(key, data):
    out("%s len=%d sha256=%s" % (key, len(data), hashlib.sha256(data).hexdigest()))


def main():
    server, mode, file1, file2 = sys.argv[1:5]
    stage = "login"
    try:
        ftp = ftplib.FTP()
        ftp.connect(server, 21, timeout=CONTROL_TIMEOUT)
        ftp.login()
        ftp.voidcmd("TYPE I")
        stage = "data-command"
        prepared, port = prepare(ftp, mode)
        out("PENDING ctrl_sport=%d data_port=%d" % (ftp.sock.getsockname()[1], port))
        stage = "wait"
        if sys.stdin.readline().strip() != "GO":
            raise RuntimeError("no GO on stdin")
        stage = "data1"
        report("DATA1", transfer(ftp, prepared, file1))
        stage = "data2"
        prepared, _ = prepare(ftp, mode)
        report("DATA2", transfer(ftp, prepared, file2))
        stage = "quit"
        ftp.quit()
        out("QUIT ok")
    except Exception as e:  # noqa: BLE001 - every failure is reported
        if stage == "data1" and mode == "passive":
            # Did only the data connection fail? The control connection
            # must still answer.
            try:
                ftp.voidcmd("NOOP")
                out("CONTROL ok")
            except Exception as e2:  # noqa: BLE001
                out("CONTROL failed what=%s" % repr(e2))
        out("ERROR stage=%s what=%s" % (stage, repr(e).replace("\n", " ")))
        sys.exit(1)


if __name__ == "__main__":
    main()

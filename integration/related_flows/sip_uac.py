"""SIP caller of the related-flows lab: one INVITE with an SDP offer.

Usage: sip_uac.py LOCAL SERVER MEDIA_PORT

Sends an INVITE from LOCAL:5060 to SERVER:5060 whose SDP offers audio on
LOCAL:MEDIA_PORT, waits for the 200 OK and prints "ANSWERED". After "GO" on
stdin it listens on MEDIA_PORT for the callee's media and, once nothing
more has come for 2 s (or 8 s after GO), prints "RTP received=N first=SEQ
last=SEQ from=IP:PORT". "ERROR stage=... what=..." on a failure.
"""

import socket
import struct
import sys
import time


def out(line):
    print(line, flush=True)


def main():
    local, server, media_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    stage = "invite"
    try:
        media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        media.bind((local, media_port))
        sig = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sig.bind((local, 5060))
        sig.settimeout(8)
        sdp = (
            "v=0\r\n"
            "o=caller 1 1 IN IP4 %s\r\n"
            "s=lab\r\n"
            "c=IN IP4 %s\r\n"
            "t=0 0\r\n"
            "m=audio %d RTP/AVP 0\r\n"
            "a=rtpmap:0 PCMU/8000\r\n" % (local, local, media_port)
        )
        invite = (
            "INVITE sip:callee@%s SIP/2.0\r\n"
            "Via: SIP/2.0/UDP %s:5060;branch=z9hG4bK-lab-1\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:caller@%s>;tag=caller1\r\n"
            "To: <sip:callee@%s>\r\n"
            "Call-ID: lab-call-1@%s\r\n"
            "CSeq: 1 INVITE\r\n"
            "Contact: <sip:caller@%s:5060>\r\n"
            "Content-Type: application/sdp\r\n"
            "Content-Length: %d\r\n"
            "\r\n%s" % (server, local, local, server, local, local, len(sdp), sdp)
        )
        sig.sendto(invite.encode(), (server, 5060))
        while True:
            raw, _ = sig.recvfrom(65535)
            if raw.startswith(b"SIP/2.0 200"):
                break
        out("ANSWERED")
        stage = "wait"
        if sys.stdin.readline().strip() != "GO":
            raise RuntimeError("no GO on stdin")
        stage = "media"
        seqs = []
        src = None
        deadline = time.monotonic() + 8
        media.settimeout(2)
        while time.monotonic() < deadline:
            try:
                packet, src = media.recvfrom(2048)
            except socket.timeout:
                if seqs:
                    break
                continue
            if len(packet) >= 12:
                seqs.append(struct.unpack("!H", packet[2:4])[0])
        where = "%s:%d" % src if src else "-"
        out(
            "RTP received=%d first=%d last=%d from=%s"
            % (len(seqs), seqs[0] if seqs else 0, seqs[-1] if seqs else 0, where)
        )
    except Exception as e:  # noqa: BLE001 - every failure is reported
        out("ERROR stage=%s what=%s" % (stage, repr(e)))
        sys.exit(1)


if __name__ == "__main__":
    main()

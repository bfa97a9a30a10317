#!/usr/bin/env python3
# A tiny hostile "Redis": answers PING/AUTH/SELECT at once, then per mode:
#   trickle: every other reply is sent one byte every DELAY seconds (each gap under the client's
#            command timeout), so no single read times out.
import socket, sys, threading, time
port, mode, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.5

def read_cmd(f):
    line = f.readline()
    if not line: return None
    if not line.startswith(b'*'): return [line.strip()]
    n = int(line[1:]); args = []
    for _ in range(n):
        l = int(f.readline()[1:]); args.append(f.read(l + 2)[:-2])
    return args

def serve(c):
    f = c.makefile('rb')
    try:
        while True:
            cmd = read_cmd(f)
            if cmd is None: return
            name = cmd[0].upper()
            if name in (b'PING',): c.sendall(b'+PONG\r\n'); continue
            if name in (b'AUTH', b'SELECT'): c.sendall(b'+OK\r\n'); continue
            if mode == 'huge':
                if name == b'EXISTS': c.sendall(b':1\r\n'); continue
                n = 1 << 30
                c.sendall(b'$%d\r\n' % n); blk = b'\0' * (1 << 20)
                for _ in range(n >> 20): c.sendall(blk)
                c.sendall(b'\r\n'); continue
            if mode == 'trickle':
                reply = b':1\r\n' if name == b'EXISTS' else b'$30\r\n' + b'x' * 30 + b'\r\n'
                if name == b'SET': reply = b'+OK\r\n'
                for i in range(len(reply)):
                    c.sendall(reply[i:i+1]); time.sleep(delay)
    except Exception:
        pass
    finally:
        c.close()

s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', port)); s.listen(16)
print('ready', flush=True)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()

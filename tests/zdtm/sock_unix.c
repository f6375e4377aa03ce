/*
 * sock_unix: unix sockets of every type with data queued in them.
 *
 * State: socketpairs of type stream, dgram and seqpacket, each with data
 * queued in both directions (several messages of different sizes for dgram
 * and seqpacket, so message boundaries count); a second stream pair shut
 * down for writing on one side after its data; a stream listener bound to
 * a path in the work dir with a connected client held by a forked child
 * (the accepted end in the root), data queued both ways; a dgram socket
 * bound to an abstract name with a client connected to it by name and two
 * datagrams queued.
 * Verified: exact queued bytes and message boundaries, nothing more;
 * SO_TYPE of every socket; names (getsockname / getpeername); EOF after the
 * data on the shut down pair and EPIPE writing the other way; the listener
 * accepts a new connection; the child, told through a pipe, checks what it
 * received and answers through its socket.
 */
#include "zdtm.h"

#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

#define NMSG 5
static const int msg_len[NMSG] = { 1, 100, 4000, 17, 60000 };

static int pair[3][2];
static const int pair_type[3] = { SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET };
static int shut[2];
static int lsn, acc, dsrv, dcli, ctl[2];
static char path[100];
static pid_t child;
static char buf[1 << 17], want[1 << 17];

static void pattern(char *b, size_t len, uint64_t seed)
{
	static uint64_t w[(1 << 17) / 8];
	zdtm_fill(w, sizeof(w), seed);
	memcpy(b, w, len);
}

static void send_msgs(int fd, uint64_t seed)
{
	for (int i = 0; i < NMSG; i++) {
		pattern(buf, msg_len[i], seed + i);
		if (send(fd, buf, msg_len[i], 0) != msg_len[i])
			zdtm_die("send %d bytes: %s", msg_len[i], strerror(errno));
	}
}

/* Expects the NMSG messages of seed, then nothing (EAGAIN). */
static void check_msgs(int fd, int type, uint64_t seed, const char *what, int eof)
{
	size_t total = 0, off = 0;
	ssize_t r;

	for (int i = 0; i < NMSG; i++)
		total += msg_len[i];
	if (type == SOCK_STREAM) {
		for (int i = 0; i < NMSG; i++) {
			pattern(want + off, msg_len[i], seed + i);
			off += msg_len[i];
		}
		off = 0;
		while (off < total) {
			r = recv(fd, buf + off, sizeof(buf) - off, MSG_DONTWAIT);
			zdtm_check(r > 0, "%s: read after %zu of %zu bytes: %s", what, off, total,
				   r ? strerror(errno) : "EOF");
			off += r;
		}
		zdtm_check(!memcmp(buf, want, total), "%s: stream data differs", what);
	} else {
		for (int i = 0; i < NMSG; i++) {
			r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT | MSG_TRUNC);
			zdtm_check(r == msg_len[i], "%s: message %d has %zd bytes, expected %d (%s)", what, i, r,
				   msg_len[i], r < 0 ? strerror(errno) : "");
			pattern(want, msg_len[i], seed + i);
			zdtm_check(!memcmp(buf, want, msg_len[i]), "%s: message %d differs", what, i);
		}
	}
	r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	if (eof)
		zdtm_check(r == 0, "%s: %zd bytes instead of EOF (%s)", what, r, strerror(errno));
	else
		zdtm_check(r < 0 && errno == EAGAIN, "%s: %zd more bytes queued (%s)", what, r, strerror(errno));
}

static void check_type(int fd, int type, const char *what)
{
	int t = -1;
	socklen_t l = sizeof(t);
	zdtm_check(!getsockopt(fd, SOL_SOCKET, SO_TYPE, &t, &l) && t == type, "%s: SO_TYPE %d, expected %d", what, t,
		   type);
}

static void child_main(int cli)
{
	struct sockaddr_un a;
	socklen_t l = sizeof(a);
	char c;

	close(ctl[1]);
	while (read(ctl[0], &c, 1) < 0 && errno == EINTR)
		;
	if (getpeername(cli, (struct sockaddr *)&a, &l) || strcmp(a.sun_path, path)) {
		zdtm_log("child: peer name %s", a.sun_path);
		_exit(3);
	}
	/* the root's data for us; check_msgs fails through zdtm_fail, which
	 * we do not want in the child: do it by hand */
	for (int i = 0, off = 0; i < NMSG; i++) {
		ssize_t r;
		pattern(want, msg_len[i], 0x5100 + i);
		for (int got = 0; got < msg_len[i]; got += r) {
			r = recv(cli, buf + got, msg_len[i] - got, MSG_DONTWAIT);
			if (r <= 0) {
				zdtm_log("child: read at %d: %s", off, r ? strerror(errno) : "EOF");
				_exit(4);
			}
		}
		if (memcmp(buf, want, msg_len[i])) {
			zdtm_log("child: message %d differs", i);
			_exit(5);
		}
		off += msg_len[i];
	}
	if (recv(cli, buf, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN) {
		zdtm_log("child: extra data");
		_exit(6);
	}
	if (send(cli, "bye", 3, 0) != 3)
		_exit(7);
	_exit(0);
}

static void sabotage(void)
{
	char c;
	switch (zdtm_sabotage) {
	case 1: /* a byte of the stream pair is consumed */
		recv(pair[0][1], &c, 1, MSG_DONTWAIT);
		break;
	case 2: /* an extra datagram */
		send(pair[1][0], "x", 1, 0);
		break;
	case 3: /* a seqpacket message lost */
		recv(pair[2][0], &c, 1, MSG_DONTWAIT);
		break;
	case 4: /* the listener is gone */
		close(lsn);
		break;
	case 5: /* the shutdown is undone: the pair is replaced */
		close(shut[1]);
		socketpair(AF_UNIX, SOCK_STREAM, 0, shut);
		break;
	}
}

int main(void)
{
	struct sockaddr_un a, dname;
	socklen_t l;
	int cli, status, i;
	char c;

	zdtm_init();
	for (i = 0; i < 3; i++) {
		if (socketpair(AF_UNIX, pair_type[i], 0, pair[i]))
			zdtm_die("socketpair: %s", strerror(errno));
		int sz = 1 << 20;
		setsockopt(pair[i][0], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
		setsockopt(pair[i][1], SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
		send_msgs(pair[i][0], 0x1000 * (i + 1));
		send_msgs(pair[i][1], 0x1000 * (i + 1) + 0x100);
	}
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, shut))
		zdtm_die("socketpair: %s", strerror(errno));
	send_msgs(shut[0], 0x4000);
	if (shutdown(shut[0], SHUT_WR))
		zdtm_die("shutdown: %s", strerror(errno));

	zdtm_path(path, sizeof(path), "listener.sock");
	unlink(path);
	memset(&a, 0, sizeof(a));
	a.sun_family = AF_UNIX;
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", path);
	lsn = socket(AF_UNIX, SOCK_STREAM, 0);
	if (lsn < 0 || bind(lsn, (struct sockaddr *)&a, sizeof(a)) || listen(lsn, 8))
		zdtm_die("listener: %s", strerror(errno));
	cli = socket(AF_UNIX, SOCK_STREAM, 0);
	if (cli < 0 || connect(cli, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("connect: %s", strerror(errno));
	acc = accept(lsn, NULL, NULL);
	if (acc < 0)
		zdtm_die("accept: %s", strerror(errno));
	send_msgs(acc, 0x5100);
	send_msgs(cli, 0x5200);
	if (pipe(ctl))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main(cli);
	zdtm_kid(child);
	close(cli);
	close(ctl[0]);

	memset(&dname, 0, sizeof(dname));
	dname.sun_family = AF_UNIX;
	snprintf(dname.sun_path + 1, sizeof(dname.sun_path) - 1, "lpm-zdtm-dgram-%d", getpid());
	l = offsetof(struct sockaddr_un, sun_path) + 1 + strlen(dname.sun_path + 1);
	dsrv = socket(AF_UNIX, SOCK_DGRAM, 0);
	dcli = socket(AF_UNIX, SOCK_DGRAM, 0);
	if (dsrv < 0 || dcli < 0 || bind(dsrv, (struct sockaddr *)&dname, l) || connect(dcli, (struct sockaddr *)&dname, l))
		zdtm_die("dgram: %s", strerror(errno));
	if (send(dcli, "first", 5, 0) != 5 || send(dcli, "second!", 7, 0) != 7)
		zdtm_die("dgram send: %s", strerror(errno));
	if (fcntl(pair[1][0], F_SETFL, O_NONBLOCK))
		zdtm_die("fcntl: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (i = 0; i < 3; i++) {
		check_type(pair[i][0], pair_type[i], "pair end 0");
		check_type(pair[i][1], pair_type[i], "pair end 1");
		check_msgs(pair[i][1], pair_type[i], 0x1000 * (i + 1), "pair, end 1", 0);
		check_msgs(pair[i][0], pair_type[i], 0x1000 * (i + 1) + 0x100, "pair, end 0", 0);
	}
	zdtm_check(fcntl(pair[1][0], F_GETFL) & O_NONBLOCK, "O_NONBLOCK lost");
	check_msgs(shut[1], SOCK_STREAM, 0x4000, "shut down pair", 1);
	zdtm_check(send(shut[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "write after SHUT_WR: %s",
		   strerror(errno));

	l = sizeof(a);
	zdtm_check(!getsockname(lsn, (struct sockaddr *)&a, &l) && !strcmp(a.sun_path, path), "listener name %s",
		   a.sun_path);
	l = sizeof(a);
	zdtm_check(!getsockname(acc, (struct sockaddr *)&a, &l) && !strcmp(a.sun_path, path), "accepted name %s",
		   a.sun_path);
	check_msgs(acc, SOCK_STREAM, 0x5200, "accepted socket", 0);
	zdtm_check(write(ctl[1], "v", 1) == 1, "tell the child: %s", strerror(errno));
	{
		struct pollfd p = { acc, POLLIN, 0 };
		zdtm_check(poll(&p, 1, 10000) == 1, "no answer from the child");
		zdtm_check(recv(acc, buf, 3, 0) == 3 && !memcmp(buf, "bye", 3), "child's answer differs");
	}
	zdtm_check(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "child failed: status %#x", status);
	zdtm_nkids = 0;

	cli = socket(AF_UNIX, SOCK_STREAM, 0);
	zdtm_check(cli >= 0 && !connect(cli, (struct sockaddr *)&a, sizeof(a)), "connect to the listener: %s",
		   strerror(errno));
	i = accept(lsn, NULL, NULL);
	zdtm_check(i >= 0, "accept: %s", strerror(errno));
	zdtm_check(send(cli, "z", 1, 0) == 1 && recv(i, &c, 1, 0) == 1 && c == 'z', "new connection carries no data");

	zdtm_check(recv(dsrv, buf, sizeof(buf), MSG_DONTWAIT) == 5 && !memcmp(buf, "first", 5), "dgram 1");
	zdtm_check(recv(dsrv, buf, sizeof(buf), MSG_DONTWAIT) == 7 && !memcmp(buf, "second!", 7), "dgram 2");
	zdtm_check(recv(dsrv, buf, sizeof(buf), MSG_DONTWAIT) < 0 && errno == EAGAIN, "extra datagram");
	zdtm_check(send(dcli, "again", 5, 0) == 5 && recv(dsrv, buf, sizeof(buf), 0) == 5, "dgram after restore");
	l = sizeof(a);
	zdtm_check(!getpeername(dcli, (struct sockaddr *)&a, &l) && !memcmp(&a, &dname, l), "dgram peer name");
	unlink(path);
	zdtm_pass();
}

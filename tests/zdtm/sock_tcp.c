/*
 * sock_tcp: TCP and UDP sockets over loopback, IPv4 and IPv6.
 *
 * State: a TCP listener on 127.0.0.1 (SO_REUSEADDR, TCP_CORK set, backlog
 * 16); a forked child connected to it (TCP_NODELAY, SO_KEEPALIVE with
 * TCP_KEEPIDLE/INTVL/CNT), the accepted end in the root (SO_LINGER); both
 * ends write a numbered byte stream without reading until the kernel
 * refuses more (non-blocking), so data sits in both send queues and both
 * receive queues; a UDP socket bound to 127.0.0.1 with SO_BROADCAST,
 * SO_RCVBUF and SO_REUSEADDR; an IPv6 TCP listener on [::1] with
 * IPV6_V6ONLY; an unbound TCP socket.
 * Verified: option values; names; on SIGTERM the root tells the child
 * through a pipe, both read the other's stream: every byte once, in order
 * (sequence continuity across the restore), then exchange more data;
 * the listeners accept new connections; the UDP socket receives a datagram
 * sent to its own address.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

static int lsn, acc, udp, lsn6, unb, ctl[2], res[2];
static long long wrote_root, wrote_child;
static pid_t child;
static struct sockaddr_in laddr, uaddr;
static struct sockaddr_in6 l6addr;
static char buf[65536];

static unsigned char byte_at(long long i, int seed)
{
	return (unsigned char)(zdtm_mix(i / 8 + seed) >> (8 * (i % 8)));
}

/* Writes the stream until the kernel takes no more; returns the count. */
static long long fill(int fd, int seed)
{
	long long n = 0;
	int fl = fcntl(fd, F_GETFL);

	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	for (;;) {
		int len = 4096;
		for (int i = 0; i < len; i++)
			buf[i] = byte_at(n + i, seed);
		ssize_t w = send(fd, buf, len, 0);
		if (w < 0 && errno == EAGAIN)
			break;
		if (w <= 0)
			zdtm_die("send: %s", strerror(errno));
		n += w;
	}
	fcntl(fd, F_SETFL, fl);
	return n;
}

/* A stalled stream: what the kernel says of the connection. */
static void log_tcp_info(int fd, long long got, long long n)
{
	struct tcp_info i;
	socklen_t l = sizeof(i);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &i, &l)) {
		zdtm_log("stalled at %lld of %lld; TCP_INFO: %s", got, n, strerror(errno));
		return;
	}
	zdtm_log("stalled at %lld of %lld: state %u ca %u retransmits %u probes %u backoff %u rto %u ato %u "
		 "snd_mss %u rcv_mss %u unacked %u lost %u retrans %u last_data_sent %u last_data_recv %u "
		 "last_ack_recv %u rcv_space %u total_retrans %u snd_cwnd %u",
		 got, n, i.tcpi_state, i.tcpi_ca_state, i.tcpi_retransmits, i.tcpi_probes, i.tcpi_backoff, i.tcpi_rto,
		 i.tcpi_ato, i.tcpi_snd_mss, i.tcpi_rcv_mss, i.tcpi_unacked, i.tcpi_lost, i.tcpi_retrans,
		 i.tcpi_last_data_sent, i.tcpi_last_data_recv, i.tcpi_last_ack_recv, i.tcpi_rcv_space,
		 i.tcpi_total_retrans, i.tcpi_snd_cwnd);
}

/* Reads exactly n bytes of the stream of seed; returns an error or NULL. */
static const char *drain(int fd, long long n, int seed)
{
	long long got = 0;
	struct pollfd p = { fd, POLLIN, 0 };

	while (got < n) {
		/* 25 s, not 10: a restored stream stalled for over 10 s in about
		 * one full-suite run in five here (cause not found yet; if it is
		 * a slow persist-timer recovery this lets the byte-exact check
		 * below decide). Stays below the runner's 30 s. */
		int waited = 0;
		while (poll(&p, 1, 5000) == 0) {
			if ((waited += 5) >= 25)
				return "timeout reading the stream (25 s)";
			log_tcp_info(fd, got, n);
		}
		ssize_t r = recv(fd, buf, sizeof(buf) < (size_t)(n - got) ? sizeof(buf) : (size_t)(n - got), 0);
		if (r <= 0)
			return r ? "read error" : "EOF in the stream";
		for (ssize_t i = 0; i < r; i++)
			if ((unsigned char)buf[i] != byte_at(got + i, seed))
				return "stream byte differs (lost, repeated or reordered data)";
		got += r;
	}
	if (recv(fd, buf, 1, MSG_DONTWAIT) != -1 || errno != EAGAIN)
		return "more bytes than were written";
	return NULL;
}

static int opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, level, name, &v, &l))
		return -2;
	return v;
}

static void child_main(int cli)
{
	char c;
	const char *e;

	close(ctl[1]);
	close(res[0]);
	wrote_child = fill(cli, 200);
	if (write(res[1], &wrote_child, sizeof(wrote_child)) != sizeof(wrote_child))
		_exit(9);
	while (read(ctl[0], &c, 1) < 0 && errno == EINTR)
		;
	if (read(ctl[0], &wrote_root, sizeof(wrote_root)) != sizeof(wrote_root))
		_exit(8);
	if (opt(cli, IPPROTO_TCP, TCP_NODELAY) != 1 || opt(cli, SOL_SOCKET, SO_KEEPALIVE) != 1 ||
	    opt(cli, IPPROTO_TCP, TCP_KEEPIDLE) != 77 || opt(cli, IPPROTO_TCP, TCP_KEEPINTVL) != 11 ||
	    opt(cli, IPPROTO_TCP, TCP_KEEPCNT) != 5) {
		zdtm_log("child: options differ");
		_exit(3);
	}
	e = drain(cli, wrote_root, 100);
	if (e) {
		zdtm_log("child: %s", e);
		_exit(4);
	}
	if (send(cli, "after", 5, 0) != 5)
		_exit(5);
	_exit(0);
}

static void sabotage(void)
{
	char c;
	int one = 1, v = 0;
	switch (zdtm_sabotage) {
	case 1: /* a byte of the child's stream is consumed */
		recv(acc, &c, 1, 0);
		break;
	case 2: /* SO_REUSEADDR lost */
		setsockopt(lsn, SOL_SOCKET, SO_REUSEADDR, &v, sizeof(v));
		break;
	case 3: /* an extra datagram */
		sendto(udp, "x", 1, 0, (struct sockaddr *)&uaddr, sizeof(uaddr));
		break;
	case 4: /* the listener is gone */
		close(lsn);
		break;
	case 5: /* SO_LINGER changed */
		setsockopt(acc, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
		break;
	}
}

int main(void)
{
	int one = 1, sz = 100000, status, fd, fd2;
	struct linger lg = { 1, 7 };
	socklen_t l;
	const char *e;
	char c;

	zdtm_init();
	lsn = socket(AF_INET, SOCK_STREAM, 0);
	memset(&laddr, 0, sizeof(laddr));
	laddr.sin_family = AF_INET;
	laddr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	l = sizeof(laddr);
	if (lsn < 0 || setsockopt(lsn, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(lsn, IPPROTO_TCP, TCP_CORK, &one, sizeof(one)) || bind(lsn, (struct sockaddr *)&laddr, l) ||
	    listen(lsn, 16) || getsockname(lsn, (struct sockaddr *)&laddr, &l))
		zdtm_die("listener: %s", strerror(errno));
	if (pipe(ctl) || pipe(res))
		zdtm_die("pipe: %s", strerror(errno));
	fd = socket(AF_INET, SOCK_STREAM, 0);
	int idle = 77, intvl = 11, cnt = 5;
	if (fd < 0 || setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) ||
	    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl)) ||
	    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt)) || connect(fd, (struct sockaddr *)&laddr, l))
		zdtm_die("client: %s", strerror(errno));
	acc = accept(lsn, NULL, NULL);
	if (acc < 0 || setsockopt(acc, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)))
		zdtm_die("accept: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main(fd);
	zdtm_kid(child);
	close(fd);
	close(ctl[0]);
	close(res[1]);
	wrote_root = fill(acc, 100);
	if (read(res[0], &wrote_child, sizeof(wrote_child)) != sizeof(wrote_child))
		zdtm_die("child did not report");

	udp = socket(AF_INET, SOCK_DGRAM, 0);
	uaddr = laddr;
	uaddr.sin_port = 0;
	l = sizeof(uaddr);
	if (udp < 0 || setsockopt(udp, SOL_SOCKET, SO_BROADCAST, &one, sizeof(one)) ||
	    setsockopt(udp, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)) ||
	    setsockopt(udp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) || bind(udp, (struct sockaddr *)&uaddr, l) ||
	    getsockname(udp, (struct sockaddr *)&uaddr, &l))
		zdtm_die("udp: %s", strerror(errno));
	lsn6 = socket(AF_INET6, SOCK_STREAM, 0);
	memset(&l6addr, 0, sizeof(l6addr));
	l6addr.sin6_family = AF_INET6;
	l6addr.sin6_addr = in6addr_loopback;
	l = sizeof(l6addr);
	if (lsn6 < 0 || setsockopt(lsn6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) ||
	    bind(lsn6, (struct sockaddr *)&l6addr, l) || listen(lsn6, 4) || getsockname(lsn6, (struct sockaddr *)&l6addr, &l))
		zdtm_die("ipv6 listener: %s", strerror(errno));
	unb = socket(AF_INET, SOCK_STREAM, 0);
	if (unb < 0)
		zdtm_die("socket: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(opt(lsn, SOL_SOCKET, SO_REUSEADDR) == 1, "listener lost SO_REUSEADDR");
	zdtm_check(opt(lsn, IPPROTO_TCP, TCP_CORK) == 1, "listener lost TCP_CORK");
	zdtm_check(opt(lsn, SOL_SOCKET, SO_ACCEPTCONN) == 1, "listener is not listening");
	l = sizeof(lg);
	zdtm_check(!getsockopt(acc, SOL_SOCKET, SO_LINGER, &lg, &l) && lg.l_onoff == 1 && lg.l_linger == 7,
		   "SO_LINGER differs");
	zdtm_check(opt(acc, SOL_SOCKET, SO_KEEPALIVE) == 0, "accepted socket has SO_KEEPALIVE");
	zdtm_check(opt(udp, SOL_SOCKET, SO_BROADCAST) == 1 && opt(udp, SOL_SOCKET, SO_REUSEADDR) == 1,
		   "UDP options differ");
	zdtm_check(opt(udp, SOL_SOCKET, SO_RCVBUF) == 2 * sz, "UDP SO_RCVBUF %d", opt(udp, SOL_SOCKET, SO_RCVBUF));
	zdtm_check(opt(lsn6, IPPROTO_IPV6, IPV6_V6ONLY) == 1, "IPV6_V6ONLY lost");
	zdtm_check(opt(unb, SOL_SOCKET, SO_TYPE) == SOCK_STREAM, "unbound socket type");

	/* the child's stream first, while the child waits: nothing else can
	 * arrive on acc before it is told to go on */
	e = drain(acc, wrote_child, 200);
	zdtm_check(!e, "root: %s", e);
	zdtm_check(write(ctl[1], "v", 1) == 1 && write(ctl[1], &wrote_root, sizeof(wrote_root)) == sizeof(wrote_root),
		   "tell the child: %s", strerror(errno));
	{
		struct pollfd p = { acc, POLLIN, 0 };
		zdtm_check(poll(&p, 1, 10000) == 1 && recv(acc, buf, 5, MSG_WAITALL) == 5 && !memcmp(buf, "after", 5),
			   "no data from the child after the stream");
	}
	zdtm_check(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "child failed: status %#x", status);
	zdtm_nkids = 0;

	fd = socket(AF_INET, SOCK_STREAM, 0);
	zdtm_check(fd >= 0 && !connect(fd, (struct sockaddr *)&laddr, sizeof(laddr)), "connect to the listener: %s",
		   strerror(errno));
	fd2 = accept(lsn, NULL, NULL);
	zdtm_check(fd2 >= 0 && send(fd, "q", 1, 0) == 1 && recv(fd2, &c, 1, 0) == 1 && c == 'q',
		   "new TCP connection");
	fd = socket(AF_INET6, SOCK_STREAM, 0);
	zdtm_check(fd >= 0 && !connect(fd, (struct sockaddr *)&l6addr, sizeof(l6addr)), "connect to [::1]: %s",
		   strerror(errno));
	zdtm_check(sendto(udp, "dg", 2, 0, (struct sockaddr *)&uaddr, sizeof(uaddr)) == 2, "udp send: %s",
		   strerror(errno));
	zdtm_check(recv(udp, buf, sizeof(buf), 0) == 2 && !memcmp(buf, "dg", 2), "udp datagram");
	zdtm_check(recv(udp, buf, sizeof(buf), MSG_DONTWAIT) < 0 && errno == EAGAIN, "extra UDP datagram");
	zdtm_pass();
}

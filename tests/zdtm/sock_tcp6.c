/*
 * sock_tcp6: IPv6 loopback TCP connections with data queued both ways.
 *
 * State, all in one process:
 *   1. a listener on [::1] (IPV6_V6ONLY) and a connection to it, c1 <-> s1:
 *      both ends wrote a numbered stream until the kernel took no more
 *      (non-blocking), so each direction has data in the sender's send
 *      queue and in the receiver's receive queue; s1 has IPV6_TCLASS 0x28;
 *   2. the same listener's second connection, c2 <-> s2: c2 sent 1000
 *      bytes and s2 sent 777, none read (receive queues only), and c2
 *      read 100 of s2's bytes first (a receive queue that was read from);
 *   3. a dual-stack listener on [::] (IPV6_V6ONLY 0) and a connection to
 *      it from 127.0.0.1, accepted as an IPv6 socket with the v4-mapped
 *      peer ::ffff:127.0.0.1, c3 <-> s3, with 3000 bytes unread each way.
 * Verified on SIGTERM: every socket ESTABLISHED with its names as before
 * and its options; every stream read to its end, every byte once and in
 * order; then each connection carries a message both ways, and each
 * listener accepts a new connection (the dual-stack one from IPv4 again).
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

struct conn {
	int c, s;
	long long cs, sc; /* bytes written client->server, server->client */
	long long c_read; /* of sc, read by the client before the checkpoint */
	int seed;
	struct sockaddr_storage cn, cp, sn, sp; /* names and peers */
};

static int lsn6, lsn_dual;
static struct sockaddr_in6 l6addr, ldaddr;
static struct conn conns[3];
static char buf[65536];

static unsigned char byte_at(long long i, int seed)
{
	return (unsigned char)(zdtm_mix(i / 8 + seed) >> (8 * (i % 8)));
}

/* Writes the stream of seed from byte `from`, at most `max` bytes (or until
 * the kernel takes no more when max < 0); returns the count written. */
static long long put(int fd, int seed, long long from, long long max)
{
	long long n = 0;
	int fl = fcntl(fd, F_GETFL);

	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	while (max < 0 || n < max) {
		int len = 4096;
		if (max >= 0 && max - n < len)
			len = (int)(max - n);
		for (int i = 0; i < len; i++)
			buf[i] = byte_at(from + n + i, seed);
		ssize_t w = send(fd, buf, len, 0);
		if (w < 0 && errno == EAGAIN && max < 0)
			break;
		if (w < 0 && errno == EAGAIN) {
			struct pollfd p = { fd, POLLOUT, 0 };
			poll(&p, 1, 1000);
			continue;
		}
		if (w <= 0)
			zdtm_die("send: %s", strerror(errno));
		n += w;
	}
	fcntl(fd, F_SETFL, fl);
	return n;
}

/* Reads bytes [from, to) of the stream of seed; an error or NULL. */
static const char *take(int fd, int seed, long long from, long long to)
{
	struct pollfd p = { fd, POLLIN, 0 };
	long long got = from;

	while (got < to) {
		if (poll(&p, 1, 20000) != 1)
			return "timeout reading the stream (20 s)";
		size_t want = sizeof(buf) < (size_t)(to - got) ? sizeof(buf) : (size_t)(to - got);
		ssize_t r = recv(fd, buf, want, 0);
		if (r <= 0)
			return r ? "read error" : "EOF in the stream";
		for (ssize_t i = 0; i < r; i++)
			if ((unsigned char)buf[i] != byte_at(got + i, seed))
				return "stream byte differs (lost, repeated or reordered data)";
		got += r;
	}
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

static int tcp_state(int fd)
{
	struct tcp_info i;
	socklen_t l = sizeof(i);
	return getsockopt(fd, IPPROTO_TCP, TCP_INFO, &i, &l) ? -1 : i.tcpi_state;
}

static void names(int fd, struct sockaddr_storage *n, struct sockaddr_storage *p)
{
	socklen_t l = sizeof(*n);
	memset(n, 0, sizeof(*n));
	memset(p, 0, sizeof(*p));
	if (getsockname(fd, (struct sockaddr *)n, &l))
		zdtm_die("getsockname: %s", strerror(errno));
	l = sizeof(*p);
	if (getpeername(fd, (struct sockaddr *)p, &l))
		zdtm_die("getpeername: %s", strerror(errno));
}

static int same_names(int fd, const struct sockaddr_storage *n, const struct sockaddr_storage *p)
{
	struct sockaddr_storage a, b;
	socklen_t l = sizeof(a);
	memset(&a, 0, sizeof(a));
	memset(&b, 0, sizeof(b));
	if (getsockname(fd, (struct sockaddr *)&a, &l))
		return 0;
	l = sizeof(b);
	if (getpeername(fd, (struct sockaddr *)&b, &l))
		return 0;
	return !memcmp(&a, n, sizeof(a)) && !memcmp(&b, p, sizeof(b));
}

static int listen_on(struct sockaddr_in6 *a, const struct in6_addr *addr, int v6only)
{
	int one = 1, fd = socket(AF_INET6, SOCK_STREAM, 0);
	socklen_t l = sizeof(*a);

	memset(a, 0, sizeof(*a));
	a->sin6_family = AF_INET6;
	a->sin6_addr = *addr;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only)) || bind(fd, (struct sockaddr *)a, l) ||
	    listen(fd, 8) || getsockname(fd, (struct sockaddr *)a, &l))
		zdtm_die("listener: %s", strerror(errno));
	return fd;
}

/* Connects from family `fam` to the listener's port (over ::1 or
 * 127.0.0.1) and accepts the connection. */
static void pair(struct conn *k, int lsn, const struct sockaddr_in6 *la, int fam, int seed)
{
	k->seed = seed;
	k->c = socket(fam, SOCK_STREAM, 0);
	if (fam == AF_INET6) {
		if (k->c < 0 || connect(k->c, (const struct sockaddr *)la, sizeof(*la)))
			zdtm_die("connect to [::1]: %s", strerror(errno));
	} else {
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = la->sin6_port };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (k->c < 0 || connect(k->c, (struct sockaddr *)&a, sizeof(a)))
			zdtm_die("connect to 127.0.0.1: %s", strerror(errno));
	}
	k->s = accept(lsn, NULL, NULL);
	if (k->s < 0)
		zdtm_die("accept: %s", strerror(errno));
}

static void sabotage(void)
{
	char c;
	int v = 0;
	switch (zdtm_sabotage) {
	case 1: /* a byte of the client's full stream is consumed */
		recv(conns[0].s, &c, 1, 0);
		break;
	case 2: /* the traffic class is lost */
		setsockopt(conns[0].s, IPPROTO_IPV6, IPV6_TCLASS, &v, sizeof(v));
		break;
	case 3: /* the dual-stack listener is gone */
		close(lsn_dual);
		break;
	}
}

int main(void)
{
	int tclass = 0x28;
	const char *e;

	zdtm_init();
	lsn6 = listen_on(&l6addr, &in6addr_loopback, 1);
	lsn_dual = listen_on(&ldaddr, &in6addr_any, 0);

	pair(&conns[0], lsn6, &l6addr, AF_INET6, 10);
	if (setsockopt(conns[0].s, IPPROTO_IPV6, IPV6_TCLASS, &tclass, sizeof(tclass)))
		zdtm_die("IPV6_TCLASS: %s", strerror(errno));
	conns[0].cs = put(conns[0].c, 10, 0, -1);
	conns[0].sc = put(conns[0].s, 11, 0, -1);

	pair(&conns[1], lsn6, &l6addr, AF_INET6, 20);
	conns[1].cs = put(conns[1].c, 20, 0, 1000);
	conns[1].sc = put(conns[1].s, 21, 0, 777);
	e = take(conns[1].c, 21, 0, 100);
	if (e)
		zdtm_die("read ahead: %s", e);
	conns[1].c_read = 100;

	pair(&conns[2], lsn_dual, &ldaddr, AF_INET, 30);
	conns[2].cs = put(conns[2].c, 30, 0, 3000);
	conns[2].sc = put(conns[2].s, 31, 0, 3000);

	for (int i = 0; i < 3; i++) {
		names(conns[i].c, &conns[i].cn, &conns[i].cp);
		names(conns[i].s, &conns[i].sn, &conns[i].sp);
	}
	{
		struct sockaddr_in6 *p = (struct sockaddr_in6 *)&conns[2].sp;
		if (p->sin6_family != AF_INET6 || !IN6_IS_ADDR_V4MAPPED(&p->sin6_addr))
			zdtm_die("the dual-stack connection's peer is not v4-mapped");
	}

	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(opt(lsn6, IPPROTO_IPV6, IPV6_V6ONLY) == 1, "[::1] listener lost IPV6_V6ONLY");
	zdtm_check(opt(lsn_dual, IPPROTO_IPV6, IPV6_V6ONLY) == 0, "dual-stack listener became IPv6 only");
	zdtm_check(opt(lsn_dual, SOL_SOCKET, SO_ACCEPTCONN) == 1, "dual-stack listener is not listening");
	zdtm_check(opt(conns[0].s, IPPROTO_IPV6, IPV6_TCLASS) == tclass, "IPV6_TCLASS %d",
		   opt(conns[0].s, IPPROTO_IPV6, IPV6_TCLASS));
	for (int i = 0; i < 3; i++) {
		struct conn *k = &conns[i];
		zdtm_check(tcp_state(k->c) == TCP_ESTABLISHED && tcp_state(k->s) == TCP_ESTABLISHED,
			   "connection %d: states %d and %d", i + 1, tcp_state(k->c), tcp_state(k->s));
		zdtm_check(same_names(k->c, &k->cn, &k->cp) && same_names(k->s, &k->sn, &k->sp),
			   "connection %d: names differ", i + 1);
		zdtm_check(opt(k->c, SOL_SOCKET, SO_DOMAIN) == (i == 2 ? AF_INET : AF_INET6) &&
				   opt(k->s, SOL_SOCKET, SO_DOMAIN) == AF_INET6,
			   "connection %d: families differ", i + 1);
		e = take(k->s, k->seed, 0, k->cs);
		zdtm_check(!e, "connection %d, client to server: %s", i + 1, e);
		e = take(k->c, k->seed + 1, k->c_read, k->sc);
		zdtm_check(!e, "connection %d, server to client: %s", i + 1, e);
		zdtm_check(recv(k->s, buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN &&
				   recv(k->c, buf, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN,
			   "connection %d: more bytes than were written", i + 1);
		/* and it goes on, both ways */
		zdtm_check(put(k->c, k->seed, k->cs, 5000) == 5000 && put(k->s, k->seed + 1, k->sc, 5000) == 5000,
			   "connection %d: send after", i + 1);
		e = take(k->s, k->seed, k->cs, k->cs + 5000);
		zdtm_check(!e, "connection %d, client to server after: %s", i + 1, e);
		e = take(k->c, k->seed + 1, k->sc, k->sc + 5000);
		zdtm_check(!e, "connection %d, server to client after: %s", i + 1, e);
	}
	{
		struct conn n6, n4;
		pair(&n6, lsn6, &l6addr, AF_INET6, 40);
		pair(&n4, lsn_dual, &ldaddr, AF_INET, 50);
		zdtm_check(send(n6.c, "q", 1, 0) == 1 && recv(n6.s, buf, 1, 0) == 1 && buf[0] == 'q',
			   "new connection to [::1]");
		zdtm_check(send(n4.c, "r", 1, 0) == 1 && recv(n4.s, buf, 1, 0) == 1 && buf[0] == 'r',
			   "new IPv4 connection to the dual-stack listener");
	}
	zdtm_pass();
}

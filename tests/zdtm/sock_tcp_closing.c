/*
 * sock_tcp_closing: TCP connections half-closed and closing, with data
 * queued both ways, over IPv4 and IPv6 loopback (both ends in the tree).
 *
 * State, per family (127.0.0.1 and ::1), four pairs a <-> b:
 *   1. b CLOSE_WAIT <-> a FIN_WAIT2: a wrote a stream and shut down; b
 *      has it unread with the EOF; b wrote a stream a has unread.
 *   2. a FIN_WAIT1 <-> b ESTABLISHED: a wrote until the kernel took no
 *      more (b's window full, a's send queue full), then shut down: its
 *      FIN waits behind unsent data; b wrote a short message a has
 *      unread.
 *   3. b LAST_ACK <-> a FIN_WAIT2: a wrote a little and shut down; b
 *      wrote until full, then shut down (its FIN behind unsent data).
 *   4. a CLOSING <-> b FIN_WAIT2: both wrote until full and shut down;
 *      a then read part of b's stream until b's FIN came in while a's
 *      own FIN still waits: a holds the rest of b's stream and the EOF.
 * Streams are numbered bytes (each byte a function of its position and
 * the stream).
 * Verified on SIGTERM: every socket in its state; then every stream read
 * to its end, every byte once and in order, with an EOF exactly where
 * the writer shut down; the CLOSE_WAIT end still sends.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#define NPAIR 4

struct stream {
	int fd;		   /* the reader */
	int seed;
	long long len;	   /* written by the writer */
	long long got;	   /* read so far */
	int eof;	   /* the writer shut down after it */
};

struct pair {
	int a, b;
	int want_a, want_b; /* TCP states */
	struct stream ab, ba;
};

static struct pair pairs[2][NPAIR];
static char buf[65536];

static unsigned char byte_at(long long i, int seed)
{
	return (unsigned char)(zdtm_mix(i / 8 + seed) >> (8 * (i % 8)));
}

static int tcp_state(int fd)
{
	struct tcp_info i;
	socklen_t l = sizeof(i);

	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &i, &l))
		return -1;
	return i.tcpi_state;
}

static const char *state_name(int s)
{
	static const char *names[] = { "?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
				       "TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING" };
	return s >= 0 && s <= 11 ? names[s] : "?";
}

/* Writes stream seed from offset *n until the kernel takes no more (or
 * max bytes); returns the new count. */
static long long fill(int fd, int seed, long long n, long long max)
{
	int fl = fcntl(fd, F_GETFL);

	fcntl(fd, F_SETFL, fl | O_NONBLOCK);
	while (n < max) {
		int len = max - n < 4096 ? (int)(max - n) : 4096;
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

/* Reads what is there of a stream now (up to max more bytes), checking
 * each byte; returns an error or NULL. */
static const char *take(struct stream *s, long long max)
{
	while (max > 0) {
		size_t want = sizeof(buf) < (size_t)max ? sizeof(buf) : (size_t)max;
		ssize_t r = recv(s->fd, buf, want, MSG_DONTWAIT);
		if (r < 0 && errno == EAGAIN)
			return NULL;
		if (r < 0)
			return strerror(errno);
		if (r == 0)
			return s->got == s->len && s->eof ? NULL : "EOF before the end of the stream";
		for (ssize_t i = 0; i < r; i++)
			if ((unsigned char)buf[i] != byte_at(s->got + i, s->seed))
				return "stream byte differs (lost, repeated or reordered data)";
		s->got += r;
		max -= r;
		if (s->got > s->len)
			return "more bytes than were written";
	}
	return NULL;
}

static void wait_state(int fd, int want, const char *what)
{
	long long deadline = zdtm_now_ms() + 5000;

	while (tcp_state(fd) != want) {
		if (zdtm_now_ms() > deadline)
			zdtm_die("%s: state %s, not %s", what, state_name(tcp_state(fd)), state_name(want));
		zdtm_sleep_ms(2);
	}
}

static int inq(int fd)
{
	int n = -1;
	ioctl(fd, FIONREAD, &n);
	return n;
}

static void make_pair(int family, int lsn, struct sockaddr_storage *la, socklen_t ll, struct pair *p, int seed)
{
	p->a = socket(family, SOCK_STREAM, 0);
	if (p->a < 0 || connect(p->a, (struct sockaddr *)la, ll))
		zdtm_die("connect: %s", strerror(errno));
	p->b = accept(lsn, NULL, NULL);
	if (p->b < 0)
		zdtm_die("accept: %s", strerror(errno));
	p->ab = (struct stream){ .fd = p->b, .seed = seed };
	p->ba = (struct stream){ .fd = p->a, .seed = seed + 1 };
}

static void setup(int fam, struct pair *ps)
{
	struct sockaddr_storage la;
	socklen_t ll;
	int lsn = socket(fam, SOCK_STREAM, 0);
	int one = 1;

	memset(&la, 0, sizeof(la));
	if (fam == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&la;
		a->sin_family = AF_INET;
		a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		ll = sizeof(*a);
	} else {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)&la;
		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		ll = sizeof(*a);
	}
	if (lsn < 0 || setsockopt(lsn, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) || bind(lsn, (struct sockaddr *)&la, ll) ||
	    listen(lsn, 8) || getsockname(lsn, (struct sockaddr *)&la, &ll))
		zdtm_die("listener: %s", strerror(errno));
	for (int i = 0; i < NPAIR; i++)
		make_pair(fam, lsn, &la, ll, &ps[i], 100 * (i + 1) + 10 * fam);
	close(lsn);

	/* 1. CLOSE_WAIT <-> FIN_WAIT2, data both ways */
	struct pair *p = &ps[0];
	p->ab.len = fill(p->a, p->ab.seed, 0, 30000);
	p->ab.eof = 1;
	shutdown(p->a, SHUT_WR);
	wait_state(p->b, TCP_CLOSE_WAIT, "pair 1 b");
	wait_state(p->a, TCP_FIN_WAIT2, "pair 1 a");
	p->ba.len = fill(p->b, p->ba.seed, 0, 20000);
	p->want_a = TCP_FIN_WAIT2, p->want_b = TCP_CLOSE_WAIT;

	/* 2. FIN_WAIT1 (FIN behind unsent data) <-> ESTABLISHED */
	p = &ps[1];
	p->ba.len = fill(p->b, p->ba.seed, 0, 777);
	p->ab.len = fill(p->a, p->ab.seed, 0, 1LL << 40);
	p->ab.eof = 1;
	shutdown(p->a, SHUT_WR);
	wait_state(p->a, TCP_FIN_WAIT1, "pair 2 a");
	p->want_a = TCP_FIN_WAIT1, p->want_b = TCP_ESTABLISHED;

	/* 3. LAST_ACK (FIN behind unsent data) <-> FIN_WAIT2 */
	p = &ps[2];
	p->ab.len = fill(p->a, p->ab.seed, 0, 5000);
	p->ab.eof = 1;
	shutdown(p->a, SHUT_WR);
	wait_state(p->b, TCP_CLOSE_WAIT, "pair 3 b");
	wait_state(p->a, TCP_FIN_WAIT2, "pair 3 a");
	p->ba.len = fill(p->b, p->ba.seed, 0, 1LL << 40);
	p->ba.eof = 1;
	shutdown(p->b, SHUT_WR);
	wait_state(p->b, TCP_LAST_ACK, "pair 3 b");
	p->want_a = TCP_FIN_WAIT2, p->want_b = TCP_LAST_ACK;

	/* 4. CLOSING <-> FIN_WAIT2 */
	p = &ps[3];
	p->ab.len = fill(p->a, p->ab.seed, 0, 1LL << 40);
	p->ba.len = fill(p->b, p->ba.seed, 0, 1LL << 40);
	p->ab.eof = p->ba.eof = 1;
	shutdown(p->a, SHUT_WR);
	shutdown(p->b, SHUT_WR);
	wait_state(p->a, TCP_FIN_WAIT1, "pair 4 a");
	wait_state(p->b, TCP_FIN_WAIT1, "pair 4 b");
	{
		long long deadline = zdtm_now_ms() + 10000;
		while (tcp_state(p->a) != TCP_CLOSING) {
			const char *e = take(&p->ba, 16384);
			if (e)
				zdtm_die("pair 4: %s", e);
			if (zdtm_now_ms() > deadline)
				zdtm_die("pair 4 a: state %s, not CLOSING", state_name(tcp_state(p->a)));
			zdtm_sleep_ms(1);
		}
	}
	wait_state(p->b, TCP_FIN_WAIT2, "pair 4 b");
	p->want_a = TCP_CLOSING, p->want_b = TCP_FIN_WAIT2;
	zdtm_log("family %d: pair 4 a holds %d bytes of b's stream (%lld of %lld read)", fam, inq(p->a), p->ba.got, p->ba.len);
}

static void sabotage(void)
{
	char c;
	switch (zdtm_sabotage) {
	case 1: /* a byte of a CLOSE_WAIT end's queue consumed */
		recv(pairs[0][0].b, &c, 1, 0);
		break;
	case 2: /* a FIN where there was none */
		shutdown(pairs[1][1].b, SHUT_WR);
		break;
	case 3: /* a byte of a CLOSING end's queue consumed */
		recv(pairs[1][3].a, &c, 1, 0);
		break;
	case 4: /* the CLOSE_WAIT end shuts down too */
		shutdown(pairs[0][0].b, SHUT_WR);
		break;
	}
}

int main(void)
{
	zdtm_init();
	setup(AF_INET, pairs[0]);
	setup(AF_INET6, pairs[1]);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int f = 0; f < 2; f++)
		for (int i = 0; i < NPAIR; i++) {
			struct pair *p = &pairs[f][i];
			int sa = tcp_state(p->a), sb = tcp_state(p->b);
			zdtm_check(sa == p->want_a && sb == p->want_b, "%s pair %d: states %s/%s, not %s/%s",
				   f ? "IPv6" : "IPv4", i + 1, state_name(sa), state_name(sb), state_name(p->want_a),
				   state_name(p->want_b));
		}
	/* Every stream to its end: reading one lets the other side send. */
	long long deadline = zdtm_now_ms() + 20000;
	for (;;) {
		int done = 1;
		for (int f = 0; f < 2; f++)
			for (int i = 0; i < NPAIR; i++) {
				struct stream *ss[2] = { &pairs[f][i].ab, &pairs[f][i].ba };
				for (int k = 0; k < 2; k++) {
					const char *e = take(ss[k], 1LL << 40);
					zdtm_check(!e, "%s pair %d stream %d: %s (%lld of %lld read)", f ? "IPv6" : "IPv4",
						   i + 1, k, e, ss[k]->got, ss[k]->len);
					if (ss[k]->got < ss[k]->len)
						done = 0;
				}
			}
		if (done)
			break;
		zdtm_check(zdtm_now_ms() < deadline, "streams not complete within 20 s");
		zdtm_sleep_ms(2);
	}
	/* EOF exactly where the writer shut down, nothing more elsewhere. */
	for (int f = 0; f < 2; f++)
		for (int i = 0; i < NPAIR; i++) {
			struct stream *ss[2] = { &pairs[f][i].ab, &pairs[f][i].ba };
			for (int k = 0; k < 2; k++) {
				struct pollfd pf = { ss[k]->fd, POLLIN, 0 };
				ssize_t r;
				if (ss[k]->eof) {
					zdtm_check(poll(&pf, 1, 10000) == 1, "%s pair %d stream %d: no EOF",
						   f ? "IPv6" : "IPv4", i + 1, k);
					r = recv(ss[k]->fd, buf, 1, 0);
					zdtm_check(r == 0, "%s pair %d stream %d: %zd after the end, not EOF",
						   f ? "IPv6" : "IPv4", i + 1, k, r);
				} else {
					r = recv(ss[k]->fd, buf, 1, MSG_DONTWAIT);
					zdtm_check(r < 0 && errno == EAGAIN, "%s pair %d stream %d: more than written",
						   f ? "IPv6" : "IPv4", i + 1, k);
				}
			}
		}
	/* The CLOSE_WAIT end still sends. */
	for (int f = 0; f < 2; f++) {
		struct pair *p = &pairs[f][0];
		struct pollfd pf = { p->a, POLLIN, 0 };
		zdtm_check(send(p->b, "z", 1, 0) == 1 && poll(&pf, 1, 10000) == 1 && recv(p->a, buf, 2, 0) == 1 &&
				   buf[0] == 'z',
			   "the CLOSE_WAIT end does not send");
	}
	zdtm_pass();
}

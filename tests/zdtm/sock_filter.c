/*
 * sock_filter: classic BPF socket filters (SO_ATTACH_FILTER).
 *
 * State:
 *   U a UDP socket on 127.0.0.1 whose filter keeps only datagrams whose
 *     first byte is 'A' (the rest are dropped)
 *   X one end of a unix datagram pair whose filter cuts every message to
 *     4 bytes, locked (SO_LOCK_FILTER)
 *   L a TCP listener on 127.0.0.1 with a filter that accepts everything
 *   T the client end of an established TCP connection (its peer in the
 *     process too) with a filter that accepts everything
 * Verified: SO_GET_FILTER gives back each program, instruction for
 * instruction, and none on the sockets that had none; SO_LOCK_FILTER;
 * the filters act: a 'B' datagram never reaches U while an 'A' one
 * does, X receives 4 bytes of a 10-byte message, and its filter cannot
 * be detached (locked); T still carries data.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#ifndef SO_LOCK_FILTER
#define SO_LOCK_FILTER 44
#endif

/* For UDP the filter sees the packet from the UDP header: byte 8 is the
 * first of the payload. */
static struct sock_filter only_a[] = {
	BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 8),
	BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 'A', 0, 1),
	BPF_STMT(BPF_RET | BPF_K, 0xffff),
	BPF_STMT(BPF_RET | BPF_K, 0),
};
static struct sock_filter cut4[] = {
	BPF_STMT(BPF_RET | BPF_K, 4),
};
static struct sock_filter all[] = {
	BPF_STMT(BPF_LD | BPF_W | BPF_LEN, 0),
	BPF_STMT(BPF_RET | BPF_A, 0),
};

static int u, usend, x[2], l, t, tpeer, plain;
static struct sockaddr_in uaddr;

static void attach(int s, struct sock_filter *f, int n)
{
	struct sock_fprog p = { .len = n, .filter = f };
	if (setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &p, sizeof(p)))
		zdtm_die("SO_ATTACH_FILTER: %s", strerror(errno));
}

static int loopback(int type, struct sockaddr_in *a)
{
	socklen_t len = sizeof(*a);
	int s = socket(AF_INET, type, 0);

	memset(a, 0, sizeof(*a));
	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || bind(s, (struct sockaddr *)a, sizeof(*a)) || getsockname(s, (struct sockaddr *)a, &len))
		zdtm_die("bind: %s", strerror(errno));
	return s;
}

static void check_filter(int s, struct sock_filter *f, int n, const char *what)
{
	struct sock_filter got[16];
	socklen_t len = 0;

	zdtm_check(getsockopt(s, SOL_SOCKET, SO_GET_FILTER, NULL, &len) == 0, "%s: SO_GET_FILTER: %s", what,
		   strerror(errno));
	zdtm_check((int)len == n, "%s has a filter of %u instructions, expected %d", what, len, n);
	if (!n)
		return;
	len = 16;
	zdtm_check(getsockopt(s, SOL_SOCKET, SO_GET_FILTER, got, &len) == 0 && (int)len == n, "%s: SO_GET_FILTER: %s",
		   what, strerror(errno));
	for (int i = 0; i < n; i++)
		zdtm_check(got[i].code == f[i].code && got[i].jt == f[i].jt && got[i].jf == f[i].jf && got[i].k == f[i].k,
			   "%s: instruction %d is {%#x %u %u %#x}, was {%#x %u %u %#x}", what, i, got[i].code, got[i].jt,
			   got[i].jf, got[i].k, f[i].code, f[i].jt, f[i].jf, f[i].k);
}

static int locked(int s)
{
	int v = -1;
	socklen_t len = sizeof(v);
	getsockopt(s, SOL_SOCKET, SO_LOCK_FILTER, &v, &len);
	return v;
}

static void sabotage(void)
{
	int v = 0;

	switch (zdtm_sabotage) {
	case 1: /* U lost its filter */
		setsockopt(u, SOL_SOCKET, SO_DETACH_FILTER, &v, sizeof(v));
		break;
	case 2: /* T got another filter */
		attach(t, cut4, 1);
		break;
	case 3: /* a socket without a filter got one */
		attach(plain, all, 2);
		break;
	}
}

int main(void)
{
	struct sockaddr_in a;
	socklen_t alen = sizeof(a);
	char b[64];
	int v = 1;

	zdtm_init();
	u = loopback(SOCK_DGRAM, &uaddr);
	attach(u, only_a, 4);
	usend = loopback(SOCK_DGRAM, &a);
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, x))
		zdtm_die("socketpair: %s", strerror(errno));
	attach(x[0], cut4, 1);
	if (setsockopt(x[0], SOL_SOCKET, SO_LOCK_FILTER, &v, sizeof(v)))
		zdtm_die("SO_LOCK_FILTER: %s", strerror(errno));
	l = loopback(SOCK_STREAM, &a);
	if (setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &v, sizeof(v)) || listen(l, 4))
		zdtm_die("listen: %s", strerror(errno));
	attach(l, all, 2);
	t = socket(AF_INET, SOCK_STREAM, 0);
	if (t < 0 || connect(t, (struct sockaddr *)&a, alen))
		zdtm_die("connect: %s", strerror(errno));
	tpeer = accept(l, NULL, NULL);
	if (tpeer < 0)
		zdtm_die("accept: %s", strerror(errno));
	attach(t, all, 2);
	plain = socket(AF_INET, SOCK_DGRAM, 0);
	if (plain < 0)
		zdtm_die("socket: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	sabotage();

	check_filter(u, only_a, 4, "the UDP socket");
	check_filter(x[0], cut4, 1, "the unix socket");
	check_filter(x[1], NULL, 0, "the unix socket's peer");
	check_filter(l, all, 2, "the TCP listener");
	check_filter(t, all, 2, "the TCP connection");
	check_filter(tpeer, all, 2, "the accepted TCP connection (inherits the listener's filter)");
	check_filter(plain, NULL, 0, "the socket without a filter");
	zdtm_check(locked(x[0]) == 1, "the unix socket's filter is no longer locked");
	zdtm_check(locked(u) == 0, "the UDP socket's filter became locked");
	v = 0;
	zdtm_check(setsockopt(x[0], SOL_SOCKET, SO_DETACH_FILTER, &v, sizeof(v)) < 0 && errno == EPERM,
		   "the locked filter could be detached");

	zdtm_check(sendto(usend, "B-dropped", 9, 0, (struct sockaddr *)&uaddr, sizeof(uaddr)) == 9, "sendto: %s",
		   strerror(errno));
	zdtm_check(sendto(usend, "A-kept", 6, 0, (struct sockaddr *)&uaddr, sizeof(uaddr)) == 6, "sendto: %s",
		   strerror(errno));
	{
		struct pollfd pf = { .fd = u, .events = POLLIN };
		zdtm_check(poll(&pf, 1, 5000) == 1, "nothing reached the UDP socket");
	}
	zdtm_check(recv(u, b, sizeof(b), MSG_DONTWAIT) == 6 && !memcmp(b, "A-kept", 6),
		   "the UDP socket did not get the 'A' datagram first: its filter let the 'B' one through");
	zdtm_check(recv(u, b, sizeof(b), MSG_DONTWAIT) < 0 && errno == EAGAIN, "a second datagram reached the UDP socket");
	zdtm_check(send(x[1], "0123456789", 10, 0) == 10, "send: %s", strerror(errno));
	zdtm_check(recv(x[0], b, sizeof(b), MSG_DONTWAIT) == 4 && !memcmp(b, "0123", 4),
		   "the unix socket's filter no longer cuts messages to 4 bytes");
	zdtm_check(send(tpeer, "tcp", 3, 0) == 3, "send: %s", strerror(errno));
	{
		struct pollfd pf = { .fd = t, .events = POLLIN };
		zdtm_check(poll(&pf, 1, 5000) == 1, "nothing reached the TCP connection");
	}
	zdtm_check(recv(t, b, sizeof(b), MSG_DONTWAIT) == 3 && !memcmp(b, "tcp", 3), "the TCP connection lost data");
	zdtm_pass();
}

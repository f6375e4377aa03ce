/*
 * sock_netlink_peer: connected netlink sockets. Two NETLINK_USERSOCK
 * sockets bound to port ids of their own, one connected to the other, and
 * a third; a NETLINK_ROUTE socket connected to the kernel (port 0), beside
 * an unconnected NETLINK_ROUTE socket. In a network namespace of its own
 * (run under `unshare --net`), so that its port ids are free.
 * Verified: port ids and peers (getpeername); the connected user socket
 * sends without an address and its peer reads the message from its port
 * id, and it refuses messages from the third (ECONNREFUSED); the
 * socket connected to the kernel refuses a message from a user port while
 * the unconnected one takes it, and answers an RTM_GETLINK dump.
 */
#include "zdtm.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <poll.h>
#include <sys/socket.h>

#define USERSOCK_A 0x7a000001u
#define USERSOCK_B 0x7a000002u
#define ROUTE_K 0x7a000003u
#define ROUTE_U 0x7a000004u
#define USERSOCK_C 0x7a000005u

static int ua, ub, uc, rk, ru;
static char buf[65536];

static int nl(int proto, uint32_t portid)
{
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = portid };
	int s = socket(AF_NETLINK, SOCK_RAW, proto);
	if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)))
		zdtm_die("netlink %d port %#x: %s", proto, portid, strerror(errno));
	return s;
}

static int nl_connect(int s, uint32_t portid)
{
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = portid };
	return connect(s, (struct sockaddr *)&a, sizeof(a));
}

static uint32_t peer(int s)
{
	struct sockaddr_nl a;
	socklen_t l = sizeof(a);
	memset(&a, 0, sizeof(a));
	if (getpeername(s, (struct sockaddr *)&a, &l))
		return 0xdead;
	return a.nl_pid;
}

/* Sends an NLMSG_NOOP from `s` to `to` (0 with `connected`: no address). */
static int noop(int s, uint32_t to, int connected)
{
	struct nlmsghdr h = { .nlmsg_len = sizeof(h), .nlmsg_type = NLMSG_NOOP, .nlmsg_seq = 42 };
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_pid = to };
	if (connected)
		return send(s, &h, sizeof(h), MSG_DONTWAIT) == sizeof(h) ? 0 : -errno;
	return sendto(s, &h, sizeof(h), MSG_DONTWAIT, (struct sockaddr *)&a, sizeof(a)) == sizeof(h) ? 0 : -errno;
}

/* Reads one message on `s`: its sender's port id, or -1. */
static long long from(int s)
{
	struct sockaddr_nl a;
	socklen_t l = sizeof(a);
	struct pollfd p = { s, POLLIN, 0 };
	if (poll(&p, 1, 10000) != 1)
		return -1;
	if (recvfrom(s, buf, sizeof(buf), 0, (struct sockaddr *)&a, &l) <= 0)
		return -1;
	return a.nl_pid;
}

static void sabotage(void)
{
	struct sockaddr_nl a = { .nl_family = AF_UNSPEC };
	switch (zdtm_sabotage) {
	case 1: /* the kernel's connection dropped */
		connect(rk, (struct sockaddr *)&a, sizeof(a));
		break;
	case 2: /* the user socket connected elsewhere */
		nl_connect(ub, ROUTE_U);
		break;
	}
}

int main(void)
{
	struct {
		struct nlmsghdr h;
		struct rtgenmsg g;
	} req;
	int r, lo = 0;
	ssize_t n;

	zdtm_init();
	ua = nl(NETLINK_USERSOCK, USERSOCK_A);
	ub = nl(NETLINK_USERSOCK, USERSOCK_B);
	uc = nl(NETLINK_USERSOCK, USERSOCK_C);
	rk = nl(NETLINK_ROUTE, ROUTE_K);
	ru = nl(NETLINK_ROUTE, ROUTE_U);
	if (nl_connect(ub, USERSOCK_A) || nl_connect(rk, 0))
		zdtm_die("connect: %s", strerror(errno));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(peer(ub) == USERSOCK_A, "user socket's peer %#x", peer(ub));
	zdtm_check(peer(ua) == 0 && peer(rk) == 0, "peers %#x %#x", peer(ua), peer(rk));
	r = noop(ub, 0, 1);
	zdtm_check(!r, "send on the connected user socket: %s", strerror(-r));
	zdtm_check(from(ua) == USERSOCK_B, "its peer did not read it from port %#x", USERSOCK_B);
	/* Connected, it takes messages from its peer's port only. */
	r = noop(uc, USERSOCK_B, 0);
	zdtm_check(r == -ECONNREFUSED, "the connected user socket took a message from another port (%s)", strerror(-r));
	r = noop(ru, ROUTE_K, 0);
	zdtm_check(r == -ECONNREFUSED, "the socket connected to the kernel took a user message (%s)", strerror(-r));
	r = noop(rk, ROUTE_U, 0);
	zdtm_check(!r, "send to the unconnected socket: %s", strerror(-r));
	zdtm_check(from(ru) == ROUTE_K, "the unconnected socket did not read a message from %#x", ROUTE_K);
	memset(&req, 0, sizeof(req));
	req.h.nlmsg_len = sizeof(req);
	req.h.nlmsg_type = RTM_GETLINK;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.h.nlmsg_seq = 1;
	req.g.rtgen_family = AF_UNSPEC;
	zdtm_check(send(rk, &req, sizeof(req), 0) == sizeof(req), "send RTM_GETLINK: %s", strerror(errno));
	for (int done = 0; !done;) {
		n = recv(rk, buf, sizeof(buf), 0);
		zdtm_check(n > 0, "recv: %s", strerror(errno));
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
				done = 1;
				break;
			}
			if (h->nlmsg_type == RTM_NEWLINK)
				lo = 1;
		}
	}
	zdtm_check(lo, "the RTM_GETLINK dump listed no link");
	zdtm_pass();
}

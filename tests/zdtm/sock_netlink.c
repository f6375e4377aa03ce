/*
 * sock_netlink: NETLINK_ROUTE sockets a program keeps open: one bound to
 * its pid with multicast groups (RTMGRP_LINK, and group 20 joined with
 * NETLINK_ADD_MEMBERSHIP), one left unbound.
 * Verified: port id and groups (getsockname, NETLINK_LIST_MEMBERSHIPS);
 * the bound socket answers an RTM_GETLINK dump that lists lo.
 */
#include "zdtm.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <sys/socket.h>

static int nl, nl2;
static char buf[65536];

static void sabotage(void)
{
	int g = 20;
	switch (zdtm_sabotage) {
	case 1: /* a group left */
		setsockopt(nl, SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, &g, sizeof(g));
		break;
	case 2: /* the socket replaced by an unbound one */
		close(nl);
		nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
		break;
	}
}

int main(void)
{
	struct sockaddr_nl a = { .nl_family = AF_NETLINK, .nl_groups = RTMGRP_LINK };
	struct {
		struct nlmsghdr h;
		struct rtgenmsg g;
	} req;
	uint32_t groups[4];
	socklen_t l;
	int g = 20, lo = 0;
	ssize_t n;

	zdtm_init();
	a.nl_pid = getpid();
	nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	nl2 = socket(AF_NETLINK, SOCK_DGRAM, NETLINK_ROUTE);
	if (nl < 0 || nl2 < 0 || bind(nl, (struct sockaddr *)&a, sizeof(a)) ||
	    setsockopt(nl, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &g, sizeof(g)))
		zdtm_die("netlink: %s", strerror(errno));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	l = sizeof(a);
	memset(&a, 0, sizeof(a));
	zdtm_check(!getsockname(nl, (struct sockaddr *)&a, &l) && a.nl_pid == (uint32_t)getpid(),
		   "port id %u, expected %d", a.nl_pid, getpid());
	l = sizeof(groups);
	memset(groups, 0, sizeof(groups));
	zdtm_check(!getsockopt(nl, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, groups, &l) &&
			   groups[0] == (RTMGRP_LINK | (1u << 19)),
		   "groups %#x", groups[0]);
	l = sizeof(a);
	zdtm_check(!getsockname(nl2, (struct sockaddr *)&a, &l) && a.nl_pid == 0, "unbound socket has port %u",
		   a.nl_pid);
	memset(&req, 0, sizeof(req));
	req.h.nlmsg_len = sizeof(req);
	req.h.nlmsg_type = RTM_GETLINK;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.h.nlmsg_seq = 1;
	req.g.rtgen_family = AF_UNSPEC;
	zdtm_check(send(nl, &req, sizeof(req), 0) == sizeof(req), "send: %s", strerror(errno));
	for (int done = 0; !done;) {
		n = recv(nl, buf, sizeof(buf), 0);
		zdtm_check(n > 0, "recv: %s", strerror(errno));
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR) {
				done = 1;
				break;
			}
			if (h->nlmsg_type != RTM_NEWLINK)
				continue;
			struct ifinfomsg *ifi = NLMSG_DATA(h);
			struct rtattr *rta = IFLA_RTA(ifi);
			int len = IFLA_PAYLOAD(h);
			for (; RTA_OK(rta, len); rta = RTA_NEXT(rta, len))
				if (rta->rta_type == IFLA_IFNAME && !strcmp(RTA_DATA(rta), "lo"))
					lo = 1;
		}
	}
	zdtm_check(lo, "RTM_GETLINK did not list lo");
	zdtm_pass();
}

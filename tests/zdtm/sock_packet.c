/*
 * sock_packet: packet sockets (AF_PACKET) in a network namespace of its
 * own (run under `unshare --net`, lo up): a SOCK_RAW socket for ETH_P_ALL
 * bound to lo with PACKET_AUXDATA, PACKET_VERSION TPACKET_V2,
 * PACKET_RESERVE 64, PACKET_COPY_THRESH and lo made promiscuous twice
 * (PACKET_ADD_MEMBERSHIP); two SOCK_DGRAM sockets for ETH_P_IP bound to
 * lo with PACKET_ORIGDEV, in fanout group 77 (PACKET_FANOUT_HASH with
 * rollover); an unbound SOCK_RAW socket of protocol 0.
 * Verified: protocols and interfaces (getsockname), every
 * option, the fanout word, lo's promiscuity count; a UDP datagram sent
 * over lo reaches the ETH_P_ALL socket (whole frame with its payload) and
 * one member of the fanout group (the IP packet, without link header).
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#define FANOUT_ID 77
#define MARK "lpm-packet-probe"

static int all, f1, f2, idle;
static char buf[65536];

static void lo_up(void)
{
	struct ifreq ifr;
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr))
		zdtm_die("lo flags: %s", strerror(errno));
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr))
		zdtm_die("lo up: %s", strerror(errno));
	close(s);
}

static int opt(int s, int level, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(s, level, name, &v, &l))
		return -1000 - errno;
	return v;
}

static void set(int s, int name, int v)
{
	if (setsockopt(s, SOL_PACKET, name, &v, sizeof(v)))
		zdtm_die("setsockopt %d: %s", name, strerror(errno));
}

static int bind_lo(int s, int proto)
{
	struct sockaddr_ll a = { .sll_family = AF_PACKET, .sll_protocol = htons(proto), .sll_ifindex = 1 };
	return bind(s, (struct sockaddr *)&a, sizeof(a));
}

/* "protocol@ifindex" of a socket's name. */
static const char *where(int s)
{
	static char out[4][40];
	static int i;
	struct sockaddr_ll a;
	socklen_t l = sizeof(a);
	char *o = out[i++ % 4];
	memset(&a, 0, sizeof(a));
	getsockname(s, (struct sockaddr *)&a, &l);
	snprintf(o, 40, "%#x@%d", ntohs(a.sll_protocol), a.sll_ifindex);
	return o;
}

/* lo's promiscuity count (IFLA_PROMISCUITY of RTM_GETLINK): what the
 * PACKET_MR_PROMISC memberships add up to. */
static int lo_promisc(void)
{
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req = { .h = { .nlmsg_len = sizeof(req), .nlmsg_type = RTM_GETLINK, .nlmsg_flags = NLM_F_REQUEST },
		  .i = { .ifi_family = AF_UNSPEC, .ifi_index = 1 } };
	static char ans[8192];
	int s = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE), r = -1;
	ssize_t n;

	if (s < 0 || send(s, &req, sizeof(req), 0) != sizeof(req) || (n = recv(s, ans, sizeof(ans), 0)) <= 0) {
		close(s);
		return -1;
	}
	close(s);
	for (struct nlmsghdr *h = (struct nlmsghdr *)ans; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
		struct rtattr *a;
		int len;
		if (h->nlmsg_type != RTM_NEWLINK)
			continue;
		len = IFLA_PAYLOAD(h);
		for (a = IFLA_RTA(NLMSG_DATA(h)); RTA_OK(a, len); a = RTA_NEXT(a, len))
			if (a->rta_type == IFLA_PROMISCUITY)
				r = *(int *)RTA_DATA(a);
	}
	return r;
}

static int promisc(int s, int add)
{
	struct packet_mreq m = { .mr_ifindex = 1, .mr_type = PACKET_MR_PROMISC };
	return setsockopt(s, SOL_PACKET, add ? PACKET_ADD_MEMBERSHIP : PACKET_DROP_MEMBERSHIP, &m, sizeof(m));
}

/* Reads packets on `s` until one holds MARK: its length, or -1. */
static ssize_t read_mark(int s, int timeout)
{
	struct pollfd p = { s, POLLIN, 0 };
	while (poll(&p, 1, timeout) == 1) {
		ssize_t n = recv(s, buf, sizeof(buf), MSG_DONTWAIT);
		if (n > 0 && memmem(buf, n, MARK, strlen(MARK)))
			return n;
	}
	return -1;
}

static void sabotage(void)
{
	int v;
	switch (zdtm_sabotage) {
	case 1: /* one promiscuous membership dropped (two were added) */
		promisc(all, 0);
		promisc(all, 0);
		break;
	case 2: /* a fanout member replaced by a socket outside the group */
		close(f2);
		f2 = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
		bind_lo(f2, ETH_P_IP);
		break;
	case 3: /* an option changed */
		v = 0;
		setsockopt(all, SOL_PACKET, PACKET_AUXDATA, &v, sizeof(v));
		break;
	}
}

int main(void)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(9) };
	int fanout = FANOUT_ID | ((PACKET_FANOUT_HASH | PACKET_FANOUT_FLAG_ROLLOVER) << 16);
	int u, got1, got2;
	ssize_t n;

	zdtm_init();
	lo_up();
	all = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	f1 = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
	f2 = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_IP));
	idle = socket(AF_PACKET, SOCK_RAW, 0);
	if (all < 0 || f1 < 0 || f2 < 0 || idle < 0)
		zdtm_die("packet sockets: %s", strerror(errno));
	set(all, PACKET_AUXDATA, 1);
	set(all, PACKET_VERSION, TPACKET_V2);
	set(all, PACKET_RESERVE, 64);
	set(all, PACKET_COPY_THRESH, 1);
	if (bind_lo(all, ETH_P_ALL) || promisc(all, 1) || promisc(all, 1))
		zdtm_die("ETH_P_ALL socket: %s", strerror(errno));
	for (int i = 0; i < 2; i++) {
		int s = i ? f2 : f1;
		set(s, PACKET_ORIGDEV, 1);
		if (bind_lo(s, ETH_P_IP) || setsockopt(s, SOL_PACKET, PACKET_FANOUT, &fanout, sizeof(fanout)))
			zdtm_die("fanout member: %s", strerror(errno));
	}
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(!strcmp(where(all), "0x3@1"), "ETH_P_ALL socket at %s", where(all));
	zdtm_check(!strcmp(where(f1), "0x800@1") && !strcmp(where(f2), "0x800@1"), "fanout members at %s %s", where(f1),
		   where(f2));
	zdtm_check(!strcmp(where(idle), "0@0"), "idle socket at %s", where(idle));
	zdtm_check(opt(all, SOL_PACKET, PACKET_AUXDATA) == 1, "PACKET_AUXDATA %d", opt(all, SOL_PACKET, PACKET_AUXDATA));
	zdtm_check(opt(all, SOL_PACKET, PACKET_VERSION) == TPACKET_V2, "PACKET_VERSION %d",
		   opt(all, SOL_PACKET, PACKET_VERSION));
	zdtm_check(opt(all, SOL_PACKET, PACKET_RESERVE) == 64, "PACKET_RESERVE %d", opt(all, SOL_PACKET, PACKET_RESERVE));
	zdtm_check(opt(f1, SOL_PACKET, PACKET_ORIGDEV) == 1 && opt(f2, SOL_PACKET, PACKET_ORIGDEV) == 1,
		   "PACKET_ORIGDEV %d %d", opt(f1, SOL_PACKET, PACKET_ORIGDEV), opt(f2, SOL_PACKET, PACKET_ORIGDEV));
	zdtm_check(opt(f1, SOL_PACKET, PACKET_FANOUT) == opt(f2, SOL_PACKET, PACKET_FANOUT) &&
			   (opt(f1, SOL_PACKET, PACKET_FANOUT) & 0xffffff) == (fanout & 0xffffff),
		   "fanout %#x %#x, expected %#x", opt(f1, SOL_PACKET, PACKET_FANOUT), opt(f2, SOL_PACKET, PACKET_FANOUT),
		   fanout);
	/* Two memberships count once on lo: the first drop keeps it. */
	zdtm_check(lo_promisc() == 1, "lo's promiscuity %d", lo_promisc());
	zdtm_check(!promisc(all, 0) && lo_promisc() == 1, "lo's promiscuity %d after one drop", lo_promisc());
	zdtm_check(!promisc(all, 0) && lo_promisc() == 0, "lo's promiscuity %d after two drops", lo_promisc());
	/* A datagram over lo. */
	u = socket(AF_INET, SOCK_DGRAM, 0);
	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	zdtm_check(sendto(u, MARK, strlen(MARK), 0, (struct sockaddr *)&to, sizeof(to)) == (ssize_t)strlen(MARK),
		   "send: %s", strerror(errno));
	n = read_mark(all, 10000);
	zdtm_check(n == 14 + 20 + 8 + (ssize_t)strlen(MARK), "ETH_P_ALL socket read %zd bytes of the datagram", n);
	got1 = read_mark(f1, 200) == 20 + 8 + (ssize_t)strlen(MARK);
	got2 = read_mark(f2, got1 ? 0 : 10000) == 20 + 8 + (ssize_t)strlen(MARK);
	zdtm_check(got1 + got2 == 1, "the fanout group delivered the packet %d times", got1 + got2);
	zdtm_pass();
}

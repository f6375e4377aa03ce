/*
 * sock_shutdown: the shutdown state of UDP sockets, and of a TCP
 * connection shut down for reading (which stays established).
 *
 * State (all on 127.0.0.1):
 *   U1 UDP, connected to U2, shut down for reading
 *   U2 UDP, bound, not connected, shut down for writing (shutdown answers
 *      ENOTCONN but sets the state)
 *   U3 UDP, connected to U2, shut down both ways
 *   U4 UDP, never bound, shut down for reading
 *   U5 UDP, connected to U2, not shut down
 *   T  TCP, established with a peer in the process, shut down for reading
 * Verified: poll's events of every socket (POLLRDHUP for a read
 * shutdown, POLLHUP for both); the receive timeouts set (SO_RCVTIMEO);
 * U1 and T read end of file while U5 waits for its timeout; U2
 * and U3 cannot send (EPIPE) while U5 can; T still sends to its peer.
 */
#include "zdtm.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#define N 6
static const char *names[N] = { "U1", "U2", "U3", "U4", "U5", "T" };
static int socks[N], tpeer;
static short ev_before[N];
static struct sockaddr_in a2;

static int udp(struct sockaddr_in *bound)
{
	socklen_t len = sizeof(*bound);
	int s = socket(AF_INET, SOCK_DGRAM, 0);

	if (s < 0)
		zdtm_die("socket: %s", strerror(errno));
	if (!bound)
		return s;
	memset(bound, 0, sizeof(*bound));
	bound->sin_family = AF_INET;
	bound->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(s, (struct sockaddr *)bound, sizeof(*bound)) || getsockname(s, (struct sockaddr *)bound, &len))
		zdtm_die("bind: %s", strerror(errno));
	return s;
}

static short events(int s)
{
	struct pollfd pf = { .fd = s, .events = POLLIN | POLLOUT | POLLRDHUP };
	if (poll(&pf, 1, 0) < 0)
		return -1;
	return pf.revents;
}

static void shut(int s, int how, int ok)
{
	if (shutdown(s, how) && (ok || errno != ENOTCONN))
		zdtm_die("shutdown: %s", strerror(errno));
}

static void timeout(int s, int ms)
{
	struct timeval tv = { 0, ms * 1000 };
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
}

static void check_timeout(int i, int ms)
{
	struct timeval tv;
	socklen_t len = sizeof(tv);

	zdtm_check(getsockopt(socks[i], SOL_SOCKET, SO_RCVTIMEO, &tv, &len) == 0 && tv.tv_sec == ms / 1000 &&
			   tv.tv_usec == (ms % 1000) * 1000,
		   "%s: SO_RCVTIMEO %ld.%06ld s, set to %d ms", names[i], (long)tv.tv_sec, (long)tv.tv_usec, ms);
}

/* Returns recv's result and how long it took, in ms. */
static ssize_t timed_recv(int s, long long *ms)
{
	char b[8];
	long long t = zdtm_now_ms();
	ssize_t r = recv(s, b, sizeof(b), 0);
	*ms = zdtm_now_ms() - t;
	return r;
}

static void sabotage(void)
{
	int fresh;

	switch (zdtm_sabotage) {
	case 1: /* U1 lost its read shutdown */
		fresh = udp(NULL);
		connect(fresh, (struct sockaddr *)&a2, sizeof(a2));
		dup2(fresh, socks[0]);
		break;
	case 2: /* U2 lost its write shutdown */
		fresh = udp(NULL);
		dup2(fresh, socks[1]);
		break;
	case 3: /* U4 lost its read shutdown */
		fresh = udp(NULL);
		dup2(fresh, socks[3]);
		break;
	}
}

int main(void)
{
	struct sockaddr_in a, ta;
	socklen_t len = sizeof(ta);
	long long ms;
	ssize_t r;
	int l, v = 1;

	zdtm_init();
	socks[1] = udp(&a2);
	for (int i = 0; i < 5; i++) {
		if (i == 1)
			continue;
		socks[i] = udp(i == 3 ? NULL : &a);
		if (i != 3 && connect(socks[i], (struct sockaddr *)&a2, sizeof(a2)))
			zdtm_die("connect: %s", strerror(errno));
	}
	shut(socks[0], SHUT_RD, 1);
	shut(socks[1], SHUT_WR, 0);
	shut(socks[2], SHUT_RDWR, 1);
	shut(socks[3], SHUT_RD, 0);

	l = socket(AF_INET, SOCK_STREAM, 0);
	memset(&ta, 0, sizeof(ta));
	ta.sin_family = AF_INET;
	ta.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (l < 0 || setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &v, sizeof(v)) ||
	    bind(l, (struct sockaddr *)&ta, sizeof(ta)) || getsockname(l, (struct sockaddr *)&ta, &len) || listen(l, 1))
		zdtm_die("listen: %s", strerror(errno));
	socks[5] = socket(AF_INET, SOCK_STREAM, 0);
	if (socks[5] < 0 || connect(socks[5], (struct sockaddr *)&ta, sizeof(ta)))
		zdtm_die("connect: %s", strerror(errno));
	tpeer = accept(l, NULL, NULL);
	if (tpeer < 0)
		zdtm_die("accept: %s", strerror(errno));
	close(l);
	shut(socks[5], SHUT_RD, 1);
	for (int i = 0; i < N; i++)
		ev_before[i] = events(socks[i]);
	if (!(ev_before[0] & POLLRDHUP) || (ev_before[4] & POLLRDHUP) || !(ev_before[2] & POLLHUP) ||
	    !(ev_before[3] & POLLRDHUP) || !(ev_before[5] & POLLRDHUP))
		zdtm_die("poll events at setup");
	timeout(socks[0], 900);
	timeout(socks[4], 300);
	timeout(socks[5], 900);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int i = 0; i < N; i++)
		zdtm_check(events(socks[i]) == ev_before[i], "%s polls %#x, polled %#x", names[i], events(socks[i]),
			   ev_before[i]);
	check_timeout(0, 900);
	check_timeout(4, 300);
	check_timeout(5, 900);
	r = timed_recv(socks[0], &ms);
	zdtm_check(r == 0, "U1 (shut down for reading) returned %zd (%s) after %lld ms, not end of file", r,
		   r ? strerror(errno) : "", ms);
	r = timed_recv(socks[5], &ms);
	zdtm_check(r == 0, "T (shut down for reading) returned %zd (%s) after %lld ms, not end of file", r,
		   r ? strerror(errno) : "", ms);
	r = timed_recv(socks[4], &ms);
	zdtm_check(r < 0 && errno == EAGAIN, "U5 (not shut down) returned %zd (%s) after %lld ms", r, strerror(errno), ms);
	zdtm_check(send(socks[1], "x", 1, MSG_NOSIGNAL) < 0 && errno == EDESTADDRREQ, "U2 is connected now: %s",
		   strerror(errno));
	zdtm_check(sendto(socks[1], "x", 1, MSG_NOSIGNAL, (struct sockaddr *)&a2, sizeof(a2)) < 0 && errno == EPIPE,
		   "U2 (shut down for writing) can send");
	zdtm_check(send(socks[2], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "U3 (shut down both ways) can send");
	zdtm_check(send(socks[4], "x", 1, MSG_NOSIGNAL) == 1, "U5 cannot send: %s", strerror(errno));
	zdtm_check(send(socks[5], "tcp", 3, MSG_NOSIGNAL) == 3, "T cannot send: %s", strerror(errno));
	{
		char b[8];
		struct pollfd pf = { .fd = tpeer, .events = POLLIN };
		zdtm_check(poll(&pf, 1, 5000) == 1 && recv(tpeer, b, sizeof(b), 0) == 3 && !memcmp(b, "tcp", 3),
			   "T's peer did not receive what T sent");
	}
	zdtm_pass();
}

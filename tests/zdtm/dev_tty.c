/*
 * dev_tty: a descriptor opened through /dev/tty, which stands for the
 * opener's controlling terminal (as ssh, less or a password prompt open
 * it).
 *
 * State: the root holds a pty's master; its child L leads a session with
 * the slave as controlling terminal and holds /dev/tty opened read-write
 * and non-blocking.
 * Verified: L's descriptor still names /dev/tty, keeps O_NONBLOCK, and
 * what L writes through it reaches the root through the master.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/ioctl.h>

static int master, ask[2], ans[2];

static void leader(const char *slave)
{
	char c, link[64], path[64];
	int s, t;
	ssize_t n;

	signal(SIGTERM, SIG_DFL);
	if (setsid() < 0 || (s = open(slave, O_RDWR)) < 0)
		_exit(3);
	t = open("/dev/tty", O_RDWR | O_NONBLOCK);
	if (t < 0)
		_exit(4);
	for (;;) {
		if (read(ask[0], &c, 1) != 1)
			_exit(5);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", t);
		n = readlink(path, link, sizeof(link) - 1);
		link[n > 0 ? n : 0] = 0;
		if (strcmp(link, "/dev/tty") != 0)
			c = 'l';
		else if (!(fcntl(t, F_GETFL) & O_NONBLOCK))
			c = 'b';
		else if (write(t, c == '1' ? "other\n" : "via-dev-tty\n", c == '1' ? 6 : 12) < 0)
			c = 'w';
		else
			c = 'Y';
		if (write(ans[1], &c, 1) != 1)
			_exit(6);
	}
}

int main(void)
{
	char buf[64] = { 0 }, slave[64], c;
	struct pollfd p;
	size_t got = 0;
	pid_t kid;

	zdtm_init();
	master = posix_openpt(O_RDWR | O_NOCTTY);
	zdtm_check(master >= 0 && grantpt(master) == 0 && unlockpt(master) == 0, "posix_openpt: %s", strerror(errno));
	zdtm_check(pipe(ask) == 0 && pipe(ans) == 0, "pipe: %s", strerror(errno));
	snprintf(slave, sizeof(slave), "%s", ptsname(master));
	kid = fork();
	zdtm_check(kid >= 0, "fork: %s", strerror(errno));
	if (kid == 0) {
		close(master);
		leader(slave);
	}
	zdtm_kid(kid);
	zdtm_ready();
	zdtm_wait();
	c = zdtm_sabotage == 1 ? '1' : 'w';
	zdtm_check(write(ask[1], &c, 1) == 1 && read(ans[0], &c, 1) == 1, "the leader does not answer");
	zdtm_check(c == 'Y', "the leader's /dev/tty: %c (l: the fd does not name /dev/tty, b: blocking, w: write failed)", c);
	p.fd = master;
	p.events = POLLIN;
	while (!strstr(buf, "\n") && got < sizeof(buf) - 1) {
		ssize_t n;

		zdtm_check(poll(&p, 1, 10000) == 1, "nothing came through the master");
		n = read(master, buf + got, sizeof(buf) - 1 - got);
		zdtm_check(n > 0, "read the master: %s", strerror(errno));
		got += n;
	}
	zdtm_check(strncmp(buf, "via-dev-tty", 11) == 0, "the master read %s", buf);
	zdtm_pass();
}

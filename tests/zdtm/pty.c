/*
 * pty: a pseudo-terminal pair held inside the tree.
 *
 * State: the root holds the master; a child leads its own session with the
 * slave as its controlling terminal (fds 0 and 1), raw-ish termios and a
 * 33x101 window; it is blocked reading the slave (nothing pending).
 * Verified: after restore the root sees the same termios and window size
 * through the master; the child checks its own termios, window size, that
 * it is the session (tcgetsid) and foreground group (tcgetpgrp) of its
 * terminal and that /dev/tty opens (the pts index may differ), then echoes
 * what the root writes upper-cased.
 */
#include "zdtm.h"

#include <ctype.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>

static struct termios want;
static struct winsize want_ws = { .ws_row = 33, .ws_col = 101, .ws_xpixel = 7, .ws_ypixel = 9 };
static int master, slave;
static pid_t child;

static int same_termios(const struct termios *t)
{
	return t->c_iflag == want.c_iflag && t->c_oflag == want.c_oflag && t->c_cflag == want.c_cflag &&
	       t->c_lflag == want.c_lflag && t->c_cc[VMIN] == want.c_cc[VMIN] && t->c_cc[VTIME] == want.c_cc[VTIME] &&
	       t->c_cc[VINTR] == want.c_cc[VINTR];
}

static char child_check(void)
{
	struct termios t;
	struct winsize ws;
	int fd;

	if (tcgetattr(0, &t) < 0 || !same_termios(&t))
		return 'a';
	if (ioctl(0, TIOCGWINSZ, &ws) < 0 || ws.ws_row != want_ws.ws_row || ws.ws_col != want_ws.ws_col ||
	    ws.ws_xpixel != want_ws.ws_xpixel || ws.ws_ypixel != want_ws.ws_ypixel)
		return 'b';
	if (tcgetsid(0) != getpid())
		return 'c';
	if (tcgetpgrp(0) != getpid())
		return 'd';
	fd = open("/dev/tty", O_RDWR);
	if (fd < 0)
		return 'e';
	close(fd);
	return 'Y';
}

static void child_main(const char *name)
{
	char c;
	int fd;

	signal(SIGHUP, SIG_IGN);
	signal(SIGTERM, SIG_DFL);
	if (setsid() < 0)
		_exit(3);
	fd = open(name, O_RDWR);
	if (fd < 0 || ioctl(fd, TIOCSCTTY, 0) < 0)
		_exit(4);
	dup2(fd, 0);
	dup2(fd, 1);
	if (fd > 1)
		close(fd);
	close(master);
	close(slave);
	if (write(1, "R", 1) != 1)
		_exit(5);
	for (;;) {
		ssize_t r = read(0, &c, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r != 1)
			_exit(6);
		if (c == '?')
			c = child_check();
		else if (c == '!') {
			ioctl(0, TIOCNOTTY);
			continue;
		}
		else
			c = toupper((unsigned char)c);
		if (write(1, &c, 1) != 1)
			_exit(7);
	}
}

/* Reads exactly n bytes from the master within 5 s. */
static int get(char *buf, int n)
{
	int got = 0;

	while (got < n) {
		struct pollfd p = { .fd = master, .events = POLLIN };
		ssize_t r;

		if (poll(&p, 1, 5000) <= 0)
			return got;
		r = read(master, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return got;
		got += r;
	}
	return got;
}

static void sabotage(void)
{
	struct termios t;
	struct winsize ws = want_ws;
	int one = 1;

	switch (zdtm_sabotage) {
	case 1: /* termios lost */
		tcgetattr(master, &t);
		t.c_lflag |= ECHO | ICANON;
		tcsetattr(master, TCSANOW, &t);
		break;
	case 2: /* window size lost */
		ws.ws_row = 24;
		ioctl(master, TIOCSWINSZ, &ws);
		break;
	case 3: /* packet mode turned on */
		ioctl(master, TIOCPKT, &one);
		break;
	case 4: /* the child loses its controlling terminal */
		write(master, "!", 1);
		zdtm_sleep_ms(100);
		break;
	}
}

int main(void)
{
	struct termios t;
	struct winsize ws;
	char name[64], buf[8];

	zdtm_init();
	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 || ptsname_r(master, name, sizeof(name)) != 0)
		zdtm_die("posix_openpt: %s", strerror(errno));
	slave = open(name, O_RDWR | O_NOCTTY);
	if (slave < 0 || tcgetattr(slave, &want) < 0)
		zdtm_die("open %s: %s", name, strerror(errno));
	want.c_lflag &= ~(ICANON | ECHO | ECHONL | IEXTEN);
	want.c_iflag &= ~(ICRNL | IXON);
	want.c_oflag &= ~OPOST;
	want.c_cc[VMIN] = 1;
	want.c_cc[VTIME] = 0;
	want.c_cc[VINTR] = 7;
	if (tcsetattr(slave, TCSANOW, &want) < 0 || tcgetattr(slave, &want) < 0 || ioctl(slave, TIOCSWINSZ, &want_ws) < 0)
		zdtm_die("tcsetattr: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main(name);
	zdtm_kid(child);
	if (get(buf, 1) != 1 || buf[0] != 'R')
		zdtm_die("the child did not start");
	/* Held until the child has the slave open: a master whose slave is
	 * closed reads as hung up. */
	close(slave);
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(tcgetattr(master, &t) == 0 && same_termios(&t), "termios changed (lflag %#x, want %#x)", t.c_lflag,
		   want.c_lflag);
	zdtm_check(ioctl(master, TIOCGWINSZ, &ws) == 0 && ws.ws_row == want_ws.ws_row && ws.ws_col == want_ws.ws_col,
		   "window size %dx%d", ws.ws_row, ws.ws_col);
	zdtm_check(write(master, "?", 1) == 1, "write: %s", strerror(errno));
	zdtm_check(get(buf, 1) == 1, "no answer from the child");
	zdtm_check(buf[0] == 'Y', "the child reports %c (a termios, b winsize, c session, d foreground group, e /dev/tty)",
		   buf[0]);
	zdtm_check(write(master, "abc", 3) == 3, "write: %s", strerror(errno));
	memset(buf, 0, sizeof(buf));
	zdtm_check(get(buf, 3) == 3 && memcmp(buf, "ABC", 3) == 0, "echo %.3s, expected ABC", buf);
	zdtm_pass();
}

/*
 * pty_pending: data waiting in pseudo-terminals, both ways.
 *
 * State: the root holds two masters; its child holds both slaves. On pty
 * A the child wrote 3000 bytes of lines (output processing on: each \n
 * became \r\n) that the root has not read. On pty B (non-canonical, no
 * echo, CR to NL on input) the root wrote 600 bytes that the child has
 * not read: it waits on a pipe before it reads them.
 * Verified: after restore the root reads from A exactly what the child
 * wrote, as the line discipline processed it then, and nothing more; the
 * child reads from B exactly what the root wrote, processed as then
 * (each \r a \n), and nothing more.
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>

#define OUT_LEN 3000
#define IN_LEN 600

static int ma, mb, go[2], verdict[2];

/* Byte i of what the child writes to A: lines of 50 bytes. */
static char out_byte(int i)
{
	return i % 50 == 49 ? '\n' : 'a' + i % 23;
}

/* Byte i of what the root writes to B: \r ends each 30 bytes. */
static char in_byte(int i)
{
	return i % 30 == 29 ? '\r' : '0' + i % 10;
}

/* Reads exactly n bytes from fd within 5 s; how many it got. */
static int get(int fd, char *buf, int n)
{
	int got = 0;

	while (got < n) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&p, 1, 5000) <= 0)
			return got;
		r = read(fd, buf + got, n - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return got;
		got += r;
	}
	return got;
}

/* Whether fd has anything more to read within 100 ms. */
static int more(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 100) > 0 && (p.revents & POLLIN);
}

static void child_main(int sa, int sb)
{
	static char buf[IN_LEN + 1];
	char c, v = 'Y';
	int i;

	for (i = 0; i < OUT_LEN; i++) {
		c = out_byte(i);
		if (write(sa, &c, 1) != 1)
			_exit(3);
	}
	/* The root says when to read B. */
	while (read(go[0], &c, 1) < 0 && errno == EINTR)
		;
	if (get(sb, buf, IN_LEN) != IN_LEN)
		v = 'n';
	for (i = 0; v == 'Y' && i < IN_LEN; i++)
		if (buf[i] != (in_byte(i) == '\r' ? '\n' : in_byte(i)))
			v = 'd';
	if (v == 'Y' && more(sb))
		v = 'm';
	if (write(verdict[1], &v, 1) != 1)
		_exit(4);
	for (;;)
		pause();
}

static int open_pair(int *slave, int raw_in)
{
	char name[64];
	struct termios t;
	int m = posix_openpt(O_RDWR | O_NOCTTY);

	if (m < 0 || grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, name, sizeof(name)) != 0)
		zdtm_die("posix_openpt: %s", strerror(errno));
	*slave = open(name, O_RDWR | O_NOCTTY);
	if (*slave < 0 || tcgetattr(*slave, &t) < 0)
		zdtm_die("open %s: %s", name, strerror(errno));
	t.c_oflag |= OPOST | ONLCR;
	if (raw_in) {
		t.c_lflag &= ~(ICANON | ECHO | ECHONL | ISIG | IEXTEN);
		t.c_iflag |= ICRNL;
		t.c_iflag &= ~IXON;
		t.c_cc[VMIN] = 1;
		t.c_cc[VTIME] = 0;
	}
	if (tcsetattr(*slave, TCSANOW, &t) < 0)
		zdtm_die("tcsetattr: %s", strerror(errno));
	return m;
}

int main(void)
{
	static char want[2 * OUT_LEN], buf[2 * OUT_LEN];
	int sa, sb, n = 0, i;
	pid_t child;
	char c;

	zdtm_init();
	ma = open_pair(&sa, 0);
	mb = open_pair(&sb, 1);
	if (pipe(go) < 0 || pipe(verdict) < 0)
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0)
		child_main(sa, sb);
	zdtm_kid(child);
	close(sa);
	close(sb);
	for (i = 0; i < OUT_LEN; i++) {
		if (out_byte(i) == '\n')
			want[n++] = '\r';
		want[n++] = out_byte(i);
	}
	for (i = 0; i < IN_LEN; i++) {
		c = in_byte(i);
		if (write(mb, &c, 1) != 1)
			zdtm_die("write B: %s", strerror(errno));
	}
	/* Ready once the child has written all of A's output. */
	for (;;) {
		int q = 0;

		if (ioctl(ma, FIONREAD, &q) == 0 && q >= n)
			break;
		zdtm_sleep_ms(5);
	}
	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1) /* a byte of the output lost */
		zdtm_check(read(ma, &c, 1) == 1, "sabotage read: %s", strerror(errno));
	if (zdtm_sabotage == 2) /* a byte of input too many */
		zdtm_check(write(mb, "x", 1) == 1, "sabotage write: %s", strerror(errno));

	i = get(ma, buf, n);
	zdtm_check(i == n, "pty A gave %d of the %d bytes the child wrote", i, n);
	zdtm_check(memcmp(buf, want, n) == 0, "pty A's output differs from what the child wrote");
	zdtm_check(!more(ma), "pty A has more output than the child wrote");
	zdtm_check(write(go[1], "g", 1) == 1, "write go: %s", strerror(errno));
	zdtm_check(get(verdict[0], &c, 1) == 1, "no verdict from the child");
	zdtm_check(c == 'Y', "the child reads pty B wrong: %c (n short, d different, m more than written)", c);
	zdtm_pass();
}

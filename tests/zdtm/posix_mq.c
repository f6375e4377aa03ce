/*
 * posix_mq: POSIX message queues in an ipc namespace of the tree's own.
 *
 * Run as: unshare --ipc posix_mq (the program is the root and owns the
 * namespace). State: queue A ("/zdtm_mq_a", maxmsg 10, msgsize 64, mode
 * 0640) open read-write at two fds sharing one description, holding five
 * messages of priorities 3, 1, 7, 3, 0; queue B ("/zdtm_mq_b", maxmsg 20,
 * above the default fs.mqueue.msg_max, raised to 30 in the namespace,
 * msgsize 300, mode 0604, owner
 * 1000:1001) open read-only with O_NONBLOCK and write-only without,
 * holding a 300-byte and an empty message of priority 2 and one of
 * priority 31; queue C (empty) shared with a child (opened before fork),
 * which waits in mq_receive on it and answers on queue D.
 * Verified: attributes (mq_getattr), flags (F_GETFL, O_NONBLOCK), mode and
 * owner (fstat), the shared description of A's fds, every message with its
 * priority in receive order, that A is reachable by name, that B's
 * read-only fd does not block once empty, and a ping-pong with the child.
 */
#include "zdtm.h"

#include <fcntl.h>
#include <mqueue.h>
#include <sys/stat.h>

static const unsigned a_prio[5] = { 3, 1, 7, 3, 0 };
/* Receive order: priority first, then age. */
static const int a_order[5] = { 2, 0, 3, 1, 4 };
static char buf[512], want[512];

static int a_len(int i)
{
	return 10 + i * 7;
}

static void a_text(int i, char *p)
{
	for (int j = 0; j < a_len(i); j++)
		p[j] = (char)('a' + (i * 5 + j) % 26);
}

static mqd_t open_q(const char *name, int flags, int mode, long max, long size)
{
	struct mq_attr at = { 0 };
	mqd_t q;

	at.mq_maxmsg = max;
	at.mq_msgsize = size;
	q = mq_open(name, flags | O_CREAT | O_EXCL, mode, &at);
	if (q == (mqd_t)-1)
		zdtm_die("mq_open %s: %s (run me under unshare --ipc)", name, strerror(errno));
	return q;
}

static void check_attr(mqd_t q, const char *what, long max, long size, long cur, long nonblock)
{
	struct mq_attr at;

	zdtm_check(mq_getattr(q, &at) == 0, "%s: mq_getattr: %s", what, strerror(errno));
	zdtm_check(at.mq_maxmsg == max && at.mq_msgsize == size && at.mq_curmsgs == cur &&
			   (at.mq_flags & O_NONBLOCK) == nonblock,
		   "%s: maxmsg %ld msgsize %ld curmsgs %ld flags %#lx, expected %ld %ld %ld %#lx", what, at.mq_maxmsg,
		   at.mq_msgsize, at.mq_curmsgs, at.mq_flags, max, size, cur, nonblock);
}

static void check_stat(mqd_t q, const char *what, unsigned mode, unsigned uid, unsigned gid)
{
	struct stat st;

	zdtm_check(fstat(q, &st) == 0, "%s: fstat: %s", what, strerror(errno));
	zdtm_check((st.st_mode & 07777) == mode && st.st_uid == uid && st.st_gid == gid,
		   "%s: mode %#o owner %u:%u, expected %#o %u:%u", what, st.st_mode & 07777, st.st_uid, st.st_gid, mode,
		   uid, gid);
}

static void check_msg(mqd_t q, const char *what, int i, const char *text, int len, unsigned prio)
{
	struct timespec now;
	unsigned got;
	ssize_t n;

	clock_gettime(CLOCK_REALTIME, &now);
	n = mq_timedreceive(q, buf, sizeof(buf), &got, &now);
	zdtm_check(n >= 0, "%s: message %d: %s", what, i, strerror(errno));
	zdtm_check(n == len && got == prio && !memcmp(buf, text, len), "%s: message %d: length %zd priority %u, expected %d %u",
		   what, i, n, got, len, prio);
}

int main(void)
{
	mqd_t a, a2, b_r, b_w, c, d;
	struct timespec ts;
	long long deadline;
	unsigned prio;
	pid_t child;
	int fl;

	zdtm_init();
	umask(0);
	{
		/* B's capacity is above the default limit of the namespace. */
		int fd = open("/proc/sys/fs/mqueue/msg_max", O_WRONLY);
		if (fd < 0 || write(fd, "30\n", 3) != 3)
			zdtm_die("raise fs.mqueue.msg_max: %s", strerror(errno));
		close(fd);
	}
	a = open_q("/zdtm_mq_a", O_RDWR, 0640, 10, 64);
	b_w = open_q("/zdtm_mq_b", O_WRONLY, 0604, 20, 300);
	c = open_q("/zdtm_mq_c", O_RDWR, 0600, 4, 16);
	d = open_q("/zdtm_mq_d", O_RDWR, 0600, 4, 16);
	b_r = mq_open("/zdtm_mq_b", O_RDONLY | O_NONBLOCK);
	a2 = dup(a);
	if (b_r == (mqd_t)-1 || a2 < 0)
		zdtm_die("open: %s", strerror(errno));
	if (fchown(b_w, 1000, 1001))
		zdtm_die("fchown: %s", strerror(errno));
	for (int i = 0; i < 5; i++) {
		a_text(i, buf);
		if (mq_send(a, buf, a_len(i), a_prio[i]))
			zdtm_die("mq_send A: %s", strerror(errno));
	}
	zdtm_fill(want, 296, 7);
	if (mq_send(b_w, want, 300, 2) || mq_send(b_w, "", 0, 2) || mq_send(b_w, "top", 3, 31))
		zdtm_die("mq_send B: %s", strerror(errno));

	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		/* Answers each message on C with the same text on D. */
		for (;;) {
			ssize_t n = mq_receive(c, buf, sizeof(buf), &prio);
			if (n >= 0)
				mq_send(d, buf, n, prio + 1);
		}
	}
	zdtm_kid(child);

	zdtm_ready();
	zdtm_wait();

	if (zdtm_sabotage == 1)
		mq_receive(a, buf, sizeof(buf), &prio);
	if (zdtm_sabotage == 2) {
		struct mq_attr at = { 0 };
		mq_setattr(b_r, &at, NULL);
	}
	if (zdtm_sabotage == 3)
		mq_send(b_w, "x", 1, 30);
	if (zdtm_sabotage == 4)
		mq_unlink("/zdtm_mq_a");
	if (zdtm_sabotage == 5)
		kill(child, SIGKILL);

	check_attr(a, "A", 10, 64, 5, 0);
	check_attr(b_r, "B read end", 20, 300, 3, O_NONBLOCK);
	check_attr(b_w, "B write end", 20, 300, 3, 0);
	check_attr(c, "C", 4, 16, 0, 0);
	check_stat(a, "A", 0640, 0, 0);
	check_stat(b_r, "B", 0604, 1000, 1001);
	zdtm_check((fcntl(a, F_GETFL) & O_ACCMODE) == O_RDWR && (fcntl(b_r, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) ==
									(O_RDONLY | O_NONBLOCK) &&
			   (fcntl(b_w, F_GETFL) & (O_ACCMODE | O_NONBLOCK)) == O_WRONLY,
		   "flags A %#x B read %#x B write %#x", fcntl(a, F_GETFL), fcntl(b_r, F_GETFL), fcntl(b_w, F_GETFL));
	/* A's two fds share one description. */
	fl = fcntl(a, F_GETFL);
	zdtm_check(fcntl(a, F_SETFL, fl | O_NONBLOCK) == 0 && (fcntl(a2, F_GETFL) & O_NONBLOCK), "A's dup does not share flags");
	fcntl(a, F_SETFL, fl);

	{
		mqd_t byname = mq_open("/zdtm_mq_a", O_RDONLY);
		struct mq_attr at;
		zdtm_check(byname != (mqd_t)-1, "mq_open /zdtm_mq_a by name: %s", strerror(errno));
		zdtm_check(mq_getattr(byname, &at) == 0 && at.mq_curmsgs == 5, "A by name holds %ld messages", at.mq_curmsgs);
		mq_close(byname);
	}
	for (int i = 0; i < 5; i++) {
		int k = a_order[i];
		a_text(k, want);
		check_msg(a2, "A", i, want, a_len(k), a_prio[k]);
	}
	check_msg(b_r, "B", 0, "top", 3, 31);
	zdtm_fill(want, 296, 7);
	check_msg(b_r, "B", 1, want, 300, 2);
	check_msg(b_r, "B", 2, "", 0, 2);
	zdtm_check(mq_receive(b_r, buf, sizeof(buf), &prio) < 0 && errno == EAGAIN, "B read end: empty receive: %s",
		   strerror(errno));

	zdtm_check(mq_send(c, "ping", 4, 4) == 0, "mq_send C: %s", strerror(errno));
	deadline = zdtm_now_ms() + 10000;
	for (;;) {
		ssize_t n;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 20 * 1000 * 1000;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		n = mq_timedreceive(d, buf, sizeof(buf), &prio, &ts);
		if (n >= 0) {
			zdtm_check(n == 4 && prio == 5 && !memcmp(buf, "ping", 4), "the child answered %zd bytes at %u", n, prio);
			break;
		}
		zdtm_check(zdtm_now_ms() < deadline, "the child does not answer through queue C");
		zdtm_check(waitpid(child, NULL, WNOHANG) == 0, "the child exited");
	}
	zdtm_pass();
}

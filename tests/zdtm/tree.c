/*
 * tree: a process tree with sessions and process groups.
 *
 *   R (root, session and group leader: the harness calls setsid)
 *   |- A   setsid(): leads a new session and group
 *   |  |- A1  setpgid(0, 0): own group in A's session
 *   |  `- A2  stays in A's group
 *   `- B   setpgid(0, 0): own group in R's session
 *      |- B1  stays in B's group
 *      `- B2  setpgid(0, 0): own group
 *
 * Every process reports (pid, ppid, pgid, sid) to R through a pipe at setup;
 * R checks the shape. On SIGTERM R sends SIGUSR1 to each, each checks its
 * ids against those it recorded and reports again; R compares every report
 * with the setup one, then tears the tree down (SIGTERM, each parent reaps).
 */
#include "zdtm.h"

#include <poll.h>
#include <sys/wait.h>

struct rec {
	char tag[4];
	int pid, ppid, pgid, sid;
	char err[96];
};

static int up[2];
static volatile sig_atomic_t got_usr1;
static struct rec self;

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

static void ids(struct rec *r, const char *tag)
{
	memset(r, 0, sizeof(*r));
	snprintf(r->tag, sizeof(r->tag), "%s", tag);
	r->pid = getpid();
	r->ppid = getppid();
	r->pgid = getpgid(0);
	r->sid = getsid(0);
}

static void send_rec(const struct rec *r)
{
	if (write(up[1], r, sizeof(*r)) != sizeof(*r))
		zdtm_log("write report: %s", strerror(errno));
}

static void wait_flag(volatile sig_atomic_t *flag)
{
	while (!*flag)
		zdtm_sleep_ms(20);
}

/* A non-root process: set up, report, wait, verify, report, wait, tear down. */
static void member(const char *tag, int new_session, int new_group, int nkids, const char **kid_tags,
		   const int *kid_session, const int *kid_group) __attribute__((noreturn));
static void member(const char *tag, int new_session, int new_group, int nkids, const char **kid_tags,
		   const int *kid_session, const int *kid_group)
{
	pid_t kids[2];
	struct rec now;

	close(up[0]);
	if (new_session && setsid() < 0)
		zdtm_die("%s: setsid: %s", tag, strerror(errno));
	if (new_group && setpgid(0, 0))
		zdtm_die("%s: setpgid: %s", tag, strerror(errno));
	for (int i = 0; i < nkids; i++) {
		kids[i] = fork();
		if (kids[i] < 0)
			zdtm_die("%s: fork: %s", tag, strerror(errno));
		if (kids[i] == 0)
			member(kid_tags[i], kid_session[i], kid_group[i], 0, NULL, NULL, NULL);
	}
	ids(&self, tag);
	send_rec(&self);

	wait_flag(&got_usr1);
	ids(&now, tag);
	if (now.pid != self.pid || now.ppid != self.ppid || now.pgid != self.pgid || now.sid != self.sid)
		snprintf(now.err, sizeof(now.err),
			 "%s: pid/ppid/pgid/sid %d/%d/%d/%d, were %d/%d/%d/%d", tag, now.pid, now.ppid,
			 now.pgid, now.sid, self.pid, self.ppid, self.pgid, self.sid);
	send_rec(&now);

	wait_flag(&zdtm_stop);
	for (int i = 0; i < nkids; i++)
		kill(kids[i], SIGTERM);
	for (int i = 0; i < nkids; i++)
		waitpid(kids[i], NULL, 0);
	_exit(0);
}

/* Reads one report within the deadline. */
static int read_rec(struct rec *r, long long deadline)
{
	struct pollfd p = { .fd = up[0], .events = POLLIN };
	long long left = deadline - zdtm_now_ms();

	if (left <= 0 || poll(&p, 1, (int)left) != 1)
		return -1;
	return read(up[0], r, sizeof(*r)) == sizeof(*r) ? 0 : -1;
}

static struct rec *find(struct rec *recs, const char *tag)
{
	for (int i = 0; i < 6; i++)
		if (!strcmp(recs[i].tag, tag))
			return &recs[i];
	zdtm_die("no report from %s", tag);
}

int main(void)
{
	static const char *a_tags[] = { "A1", "A2" }, *b_tags[] = { "B1", "B2" };
	static const int a_sess[] = { 0, 0 }, a_grp[] = { 1, 0 };
	static const int b_sess[] = { 0, 0 }, b_grp[] = { 0, 1 };
	struct rec hello[6], *a, *a1, *a2, *b, *b1, *b2, now;
	struct sigaction sa;
	pid_t pa, pb;
	long long deadline;

	zdtm_init();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	if (pipe(up))
		zdtm_die("pipe: %s", strerror(errno));
	ids(&self, "R");
	if (self.sid != self.pid || self.pgid != self.pid)
		zdtm_die("the root is not a session leader (sid %d, pgid %d)", self.sid, self.pgid);
	pa = fork();
	if (pa == 0)
		member("A", 1, 0, 2, a_tags, a_sess, a_grp);
	pb = fork();
	if (pb == 0)
		member("B", 0, 1, 2, b_tags, b_sess, b_grp);
	if (pa < 0 || pb < 0)
		zdtm_die("fork: %s", strerror(errno));
	zdtm_kid(pa);
	zdtm_kid(pb);

	deadline = zdtm_now_ms() + 10000;
	for (int i = 0; i < 6; i++)
		if (read_rec(&hello[i], deadline))
			zdtm_die("only %d of 6 processes reported", i);
	a = find(hello, "A"), a1 = find(hello, "A1"), a2 = find(hello, "A2");
	b = find(hello, "B"), b1 = find(hello, "B1"), b2 = find(hello, "B2");
	if (a->pid != pa || a->ppid != self.pid || a->sid != pa || a->pgid != pa ||
	    a1->ppid != pa || a1->sid != pa || a1->pgid != a1->pid ||
	    a2->ppid != pa || a2->sid != pa || a2->pgid != pa ||
	    b->pid != pb || b->ppid != self.pid || b->sid != self.pid || b->pgid != pb ||
	    b1->ppid != pb || b1->sid != self.pid || b1->pgid != pb ||
	    b2->ppid != pb || b2->sid != self.pid || b2->pgid != b2->pid)
		zdtm_die("the tree does not have the expected shape");
	for (int i = 0; i < 6; i++)
		if (hello[i].pid != pa && hello[i].pid != pb)
			zdtm_kid(hello[i].pid); /* killed on failure; A and B reap them */

	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1) /* a process group was not restored */
		setpgid(pb, self.pid);
	if (zdtm_sabotage == 2) /* a process was not restored */
		kill(a2->pid, SIGKILL);

	ids(&now, "R");
	zdtm_check(now.pid == self.pid && now.ppid == self.ppid && now.pgid == self.pgid &&
			   now.sid == self.sid,
		   "R: pid/ppid/pgid/sid %d/%d/%d/%d, were %d/%d/%d/%d", now.pid, now.ppid, now.pgid,
		   now.sid, self.pid, self.ppid, self.pgid, self.sid);
	for (int i = 0; i < 6; i++)
		zdtm_check(kill(hello[i].pid, SIGUSR1) == 0, "%s (pid %d) is gone: %s", hello[i].tag,
			   hello[i].pid, strerror(errno));
	deadline = zdtm_now_ms() + 10000;
	for (int i = 0; i < 6; i++) {
		struct rec r, *h;
		zdtm_check(read_rec(&r, deadline) == 0, "only %d of 6 processes reported within 10 s", i);
		zdtm_check(!r.err[0], "%s", r.err);
		h = find(hello, r.tag);
		zdtm_check(r.pid == h->pid && r.ppid == h->ppid && r.pgid == h->pgid && r.sid == h->sid,
			   "%s reports pid/ppid/pgid/sid %d/%d/%d/%d, were %d/%d/%d/%d", r.tag, r.pid,
			   r.ppid, r.pgid, r.sid, h->pid, h->ppid, h->pgid, h->sid);
	}
	kill(pa, SIGTERM);
	kill(pb, SIGTERM);
	deadline = zdtm_now_ms() + 10000;
	for (int done = 0; done < 2;) {
		pid_t r = waitpid(-1, NULL, WNOHANG);
		zdtm_check(r >= 0, "waitpid: %s", strerror(errno));
		if (r > 0) {
			done++;
			continue;
		}
		zdtm_check(zdtm_now_ms() < deadline, "the tree did not exit within 10 s of SIGTERM");
		zdtm_sleep_ms(5);
	}
	zdtm_nkids = 0;
	zdtm_pass();
}

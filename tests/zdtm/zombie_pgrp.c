/*
 * zombie_pgrp: the process groups and sessions of zombies.
 *
 * State: children of the root, each exited and not waited for:
 *   z_own leads a group of its own;
 *   z_sib is in the group of a live sibling (leader, which runs);
 *   z_orphan is in the group of a child that has exited and was reaped
 *     (the group has no leader any more); a live child, member, is in
 *     that group too;
 *   z_root stayed in the root's group;
 *   z_sess led a session of its own.
 * Verified: each zombie's group and session (/proc/PID/stat), the live
 * member's group, that a signal to the leaderless group reaches its live
 * member, and each zombie's wait status.
 */
#include "zdtm.h"

enum { Z_OWN, Z_SIB, Z_ORPHAN, Z_ROOT, Z_SESS, NZ };
static const char *names[NZ] = { "z_own", "z_sib", "z_orphan", "z_root", "z_sess" };
static pid_t z[NZ], leader, member, gone;
static pid_t want_pgrp[NZ], want_sid[NZ];
static volatile sig_atomic_t usr1;

static int stat_of(pid_t pid, char *state, int *pgrp, int *sid)
{
	char path[64], buf[512];
	const char *p;
	int ppid;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if (zdtm_read_file(path, buf, sizeof(buf)) <= 0 || !(p = strrchr(buf, ')')))
		return -1;
	return sscanf(p + 2, "%c %d %d %d", state, &ppid, pgrp, sid) == 4 ? 0 : -1;
}

static void wait_state(pid_t pid, char want)
{
	long long end = zdtm_now_ms() + 10000;
	char st = 0;
	int g, s;

	while (stat_of(pid, &st, &g, &s) || st != want) {
		if (zdtm_now_ms() > end)
			zdtm_die("pid %d did not reach state %c", pid, want);
		zdtm_sleep_ms(2);
	}
}

static void on_usr1(int sig)
{
	(void)sig;
	usr1 = 1;
}

static pid_t spawn(int kind, int pipefd, int other)
{
	pid_t pid = fork();
	char c;

	if (pid < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (pid)
		return pid;
	close(other);
	switch (kind) {
	case Z_OWN:
		setpgid(0, 0);
		break;
	case Z_SIB:
		setpgid(0, leader);
		break;
	case Z_ORPHAN:
		setpgid(0, gone);
		break;
	case Z_SESS:
		setsid();
		break;
	}
	/* Exit only once the root has recorded the group (a status each). */
	while (read(pipefd, &c, 1) < 0 && errno == EINTR)
		;
	_exit(10 + kind);
}

int main(void)
{
	int p[2], st;
	char state;
	int g, s;

	zdtm_init();
	if (pipe(p))
		zdtm_die("pipe: %s", strerror(errno));
	signal(SIGUSR2, SIG_IGN);
	/* The live leader of z_sib's group. */
	leader = fork();
	if (leader == 0) {
		close(p[0]);
		close(p[1]);
		setpgid(0, 0);
		for (;;)
			pause();
	}
	zdtm_kid(leader);
	setpgid(leader, leader);
	/* `gone` leads a group, then exits and is reaped. */
	gone = fork();
	if (gone == 0) {
		close(p[0]);
		close(p[1]);
		setpgid(0, 0);
		for (;;)
			pause();
	}
	setpgid(gone, gone);
	/* The live member of gone's group: it exits 42 on SIGUSR1. */
	member = fork();
	if (member == 0) {
		struct sigaction sa;
		close(p[0]);
		close(p[1]);
		memset(&sa, 0, sizeof(sa));
		sa.sa_handler = on_usr1;
		sigaction(SIGUSR1, &sa, NULL);
		setpgid(0, gone);
		while (!usr1)
			pause();
		_exit(42);
	}
	zdtm_kid(member);
	setpgid(member, gone);
	for (int k = 0; k < NZ; k++) {
		z[k] = spawn(k, p[0], p[1]);
		zdtm_kid(z[k]);
		if (k == Z_OWN)
			setpgid(z[k], z[k]);
		if (k == Z_SIB)
			setpgid(z[k], leader);
		if (k == Z_ORPHAN)
			setpgid(z[k], gone);
	}
	kill(gone, SIGKILL);
	if (waitpid(gone, &st, 0) != gone)
		zdtm_die("waitpid gone: %s", strerror(errno));
	/* Let every zombie exit. */
	close(p[0]);
	close(p[1]);
	for (int k = 0; k < NZ; k++) {
		wait_state(z[k], 'Z');
		if (stat_of(z[k], &state, &g, &s))
			zdtm_die("stat %d", z[k]);
		want_pgrp[k] = g;
		want_sid[k] = s;
	}
	if (want_pgrp[Z_OWN] != z[Z_OWN] || want_pgrp[Z_SIB] != leader || want_pgrp[Z_ORPHAN] != gone ||
	    want_pgrp[Z_ROOT] != getpgrp() || want_sid[Z_SESS] != z[Z_SESS])
		zdtm_die("the zombies are not in the planned groups");
	if (stat_of(member, &state, &g, &s) || g != gone)
		zdtm_die("the member is not in the leaderless group");
	zdtm_ready();
	zdtm_wait();

	switch (zdtm_sabotage) {
	case 1: /* the member moves to a group of its own */
		setpgid(member, member);
		break;
	case 2: /* a zombie reaped early */
		waitpid(z[Z_ORPHAN], NULL, 0);
		break;
	}
	for (int k = 0; k < NZ; k++) {
		zdtm_check(stat_of(z[k], &state, &g, &s) == 0 && state == 'Z', "%s %d is not a zombie", names[k], z[k]);
		zdtm_check(g == want_pgrp[k] && s == want_sid[k], "%s %d: group %d session %d, expected group %d session %d", names[k],
			   z[k], g, s, want_pgrp[k], want_sid[k]);
	}
	zdtm_check(stat_of(member, &state, &g, &s) == 0 && g == gone, "the live member %d is in group %d, not %d", member, g, gone);
	zdtm_check(kill(-gone, SIGUSR1) == 0, "kill(-%d): %s (the leaderless group is gone)", gone, strerror(errno));
	st = zdtm_wait_kid(member, "exit on the signal to its group");
	zdtm_check(WIFEXITED(st) && WEXITSTATUS(st) == 42, "the member exited with %#x", st);
	zdtm_kid(leader);
	for (int k = 0; k < NZ; k++) {
		zdtm_check(waitpid(z[k], &st, WNOHANG) == z[k], "waitpid(%s): %s", names[k], strerror(errno));
		zdtm_check(WIFEXITED(st) && WEXITSTATUS(st) == 10 + k, "%s: wait status %#x", names[k], st);
	}
	zdtm_pass();
}

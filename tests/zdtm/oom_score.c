/*
 * oom_score: each process's oom_score_adj (per process, inherited at fork).
 *
 * State: the root at 300; a child raised to 700 then lowered to 250; its
 * child, forked at 250, raised to 1000; a second child of the root left at
 * the root's 300 (inherited). Only values at or above 0 are used: going
 * below the lowest value a process was given by a privileged writer needs
 * CAP_SYS_RESOURCE.
 * Verified: /proc/PID/oom_score_adj of every process, and that the root
 * may still lower its own to 0 (any value at or above 0 stays allowed).
 */
#include "zdtm.h"

#include <sys/prctl.h>

static pid_t kids[3];
static const int want[4] = { 300, 250, 1000, 300 };
static const char *names[4] = { "root", "child", "grandchild", "second child" };

static int get_adj(pid_t pid)
{
	char path[64], buf[32];
	snprintf(path, sizeof(path), "/proc/%d/oom_score_adj", pid);
	if (zdtm_read_file(path, buf, sizeof(buf)) <= 0)
		return -10000;
	return atoi(buf);
}

static int set_adj(pid_t pid, int v)
{
	char path[64], buf[32];
	int fd, n;
	snprintf(path, sizeof(path), "/proc/%d/oom_score_adj", pid);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	n = snprintf(buf, sizeof(buf), "%d\n", v);
	n = write(fd, buf, n) == n ? 0 : -1;
	close(fd);
	return n;
}

static void sleep_forever(void)
{
	for (;;)
		zdtm_sleep_ms(50);
}

int main(void)
{
	pid_t pids[4];
	int p[2];
	char c;

	zdtm_init();
	if (set_adj(getpid(), 300) || pipe(p))
		zdtm_die("set oom_score_adj: %s", strerror(errno));
	kids[0] = fork();
	if (kids[0] < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (kids[0] == 0) {
		pid_t g;
		if (set_adj(getpid(), 700) || set_adj(getpid(), 250))
			_exit(2);
		g = fork();
		if (g == 0) {
			/* It goes with its parent (the runner kills the root's children). */
			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (set_adj(getpid(), 1000))
				_exit(2);
			close(p[1]);
			sleep_forever();
		}
		if (write(p[1], &g, sizeof(g)) != sizeof(g))
			_exit(2);
		close(p[1]);
		sleep_forever();
	}
	zdtm_kid(kids[0]);
	kids[2] = fork();
	if (kids[2] < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (kids[2] == 0) {
		close(p[1]);
		sleep_forever();
	}
	zdtm_kid(kids[2]);
	close(p[1]);
	if (read(p[0], &kids[1], sizeof(kids[1])) != sizeof(kids[1]))
		zdtm_die("the child did not report its child");
	/* Every writer of the pipe gone: each has set its value. */
	while (read(p[0], &c, 1) > 0)
		;
	pids[0] = getpid();
	pids[1] = kids[0];
	pids[2] = kids[1];
	pids[3] = kids[2];
	for (int i = 0; i < 4; i++)
		if (get_adj(pids[i]) != want[i])
			zdtm_die("%s %d: oom_score_adj %d, expected %d", names[i], pids[i], get_adj(pids[i]), want[i]);
	zdtm_ready();
	zdtm_wait();

	switch (zdtm_sabotage) {
	case 1:
		set_adj(kids[1], 999);
		break;
	case 2: /* the root's value given to a child, as a restore that forgets would */
		set_adj(kids[0], 300);
		break;
	}
	for (int i = 0; i < 4; i++)
		zdtm_check(get_adj(pids[i]) == want[i], "%s %d: oom_score_adj %d, expected %d", names[i], pids[i], get_adj(pids[i]),
			   want[i]);
	zdtm_check(set_adj(getpid(), 0) == 0, "lowering the root's oom_score_adj to 0: %s", strerror(errno));
	zdtm_pass();
}

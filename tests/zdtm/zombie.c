/*
 * Zombies: three children that exited and are not waited for (exit code 42,
 * killed by SIGUSR1, exit code 7 in a process group of its own). Each
 * SIGCHLD was handled (counted) before the next child was made. After
 * restore: the same pids, still zombies of this process, no SIGCHLD more
 * (handled or pending) than before, and waitpid returns each one's status.
 */
#include "zdtm.h"

static volatile sig_atomic_t chld_count;

static void on_chld(int sig)
{
	(void)sig;
	chld_count++;
}

static char proc_state(pid_t pid, int *pgid, int *ppid)
{
	char path[64], buf[512], state = '?';
	const char *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	if (zdtm_read_file(path, buf, sizeof(buf)) <= 0)
		return '?';
	p = strrchr(buf, ')');
	if (!p || sscanf(p + 2, "%c %d %d", &state, ppid, pgid) != 3)
		return '?';
	return state;
}

/* Waits (bounded) until pid is a zombie and `count` SIGCHLDs were handled. */
static void wait_zombie(pid_t pid, int count)
{
	long long end = zdtm_now_ms() + 10000;
	int pgid, ppid;

	while (proc_state(pid, &pgid, &ppid) != 'Z' || chld_count < count) {
		if (zdtm_now_ms() > end)
			zdtm_die("child %d did not become a zombie (SIGCHLDs %d)", pid, (int)chld_count);
		zdtm_sleep_ms(5);
	}
}

int main(void)
{
	struct sigaction sa;
	pid_t a, b, c;
	sigset_t pend;
	int st, pgid, ppid;

	zdtm_init();
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_chld;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGCHLD, &sa, NULL))
		zdtm_die("sigaction SIGCHLD: %s", strerror(errno));

	a = fork();
	if (a < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (a == 0)
		_exit(42);
	wait_zombie(a, 1);

	b = fork();
	if (b < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (b == 0) {
		for (;;)
			pause();
	}
	kill(b, SIGUSR1);
	wait_zombie(b, 2);

	c = fork();
	if (c < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (c == 0) {
		setpgid(0, 0);
		_exit(7);
	}
	setpgid(c, c);
	wait_zombie(c, 3);

	zdtm_ready();
	zdtm_wait();

	switch (zdtm_sabotage) {
	case 1: /* reap one early: it is no longer a zombie */
		waitpid(a, NULL, 0);
		break;
	case 2: /* an extra SIGCHLD, as a careless restore would send */
		raise(SIGCHLD);
		break;
	case 3: /* one more child, as if a zombie were doubled */
		if (fork() == 0)
			_exit(0);
		zdtm_sleep_ms(100);
		break;
	}

	zdtm_check(chld_count == 3, "%d SIGCHLDs handled, expected 3", (int)chld_count);
	sigpending(&pend);
	zdtm_check(!sigismember(&pend, SIGCHLD), "SIGCHLD pending");
	zdtm_check(proc_state(a, &pgid, &ppid) == 'Z' && ppid == getpid(), "child a %d is not our zombie", a);
	zdtm_check(proc_state(b, &pgid, &ppid) == 'Z' && ppid == getpid(), "child b %d is not our zombie", b);
	zdtm_check(proc_state(c, &pgid, &ppid) == 'Z' && ppid == getpid(), "child c %d is not our zombie", c);
	zdtm_check(pgid == c, "zombie c is in group %d, not its own %d", pgid, c);
	zdtm_check(waitpid(a, &st, WNOHANG) == a, "waitpid(a): %s", strerror(errno));
	zdtm_check(WIFEXITED(st) && WEXITSTATUS(st) == 42, "a: wait status %#x, expected exit 42", st);
	zdtm_check(waitpid(b, &st, WNOHANG) == b, "waitpid(b): %s", strerror(errno));
	zdtm_check(WIFSIGNALED(st) && WTERMSIG(st) == SIGUSR1, "b: wait status %#x, expected SIGUSR1", st);
	zdtm_check(waitpid(c, &st, WNOHANG) == c, "waitpid(c): %s", strerror(errno));
	zdtm_check(WIFEXITED(st) && WEXITSTATUS(st) == 7, "c: wait status %#x, expected exit 7", st);
	zdtm_check(waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD, "another child to wait for");
	zdtm_pass();
}

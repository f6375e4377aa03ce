/*
 * cwd_proc: a working directory that is the /proc directory of a
 * process that exited since (it reads "/proc/N (deleted)").
 *
 * State: the root forked a child, entered /proc/<child>, and the child
 * exited and was reaped; a second child entered /proc/<root> (alive),
 * and waits.
 * Verified: the root's working directory reads "/proc/N (deleted)" with
 * the same N, and nothing can be opened in it any more (ESRCH); the second child's reads "/proc/<root>" and its
 * status file names the root.
 */
#include "zdtm.h"

static pid_t gone_pid;
static int to_kid[2], from_kid[2];

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the working directory is a live process's */
		chdir("/proc/self");
		break;
	case 2: /* the working directory is the root's own directory */
		chdir("/");
		break;
	}
}

int main(void)
{
	char lnk[256], want[256], buf[4096];
	pid_t pid, kid;
	ssize_t n;
	char x;

	zdtm_init();
	pid = fork();
	if (pid < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (pid == 0) {
		pause();
		_exit(0);
	}
	snprintf(buf, sizeof(buf), "/proc/%d", pid);
	if (chdir(buf))
		zdtm_die("chdir %s: %s", buf, strerror(errno));
	kill(pid, SIGKILL);
	if (waitpid(pid, NULL, 0) != pid)
		zdtm_die("waitpid: %s", strerror(errno));
	gone_pid = pid;
	if (pipe(to_kid) || pipe(from_kid))
		zdtm_die("pipe: %s", strerror(errno));
	kid = fork();
	if (kid < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (kid == 0) {
		/* Answers 'y' when its cwd names the root and shows its status. */
		snprintf(buf, sizeof(buf), "/proc/%d", getppid());
		if (chdir(buf))
			_exit(2);
		while (read(to_kid[0], &x, 1) == 1) {
			char l[256], st[4096], want2[64];
			ssize_t m = readlink("/proc/self/cwd", l, sizeof(l) - 1);
			x = 'n';
			if (m > 0) {
				l[m] = 0;
				if (!strcmp(l, buf) && zdtm_read_file("status", st, sizeof(st)) > 0) {
					snprintf(want2, sizeof(want2), "\nPid:\t%d\n", getppid());
					x = strstr(st, want2) ? 'y' : 'n';
				}
			}
			if (write(from_kid[1], &x, 1) != 1)
				_exit(3);
		}
		_exit(0);
	}
	zdtm_kid(kid);

	zdtm_ready();
	zdtm_wait();
	sabotage();

	n = readlink("/proc/self/cwd", lnk, sizeof(lnk) - 1);
	zdtm_check(n > 0, "readlink cwd: %s", strerror(errno));
	lnk[n] = 0;
	snprintf(want, sizeof(want), "/proc/%d (deleted)", gone_pid);
	zdtm_check(!strcmp(lnk, want), "the working directory is %s, expected %s", lnk, want);
	zdtm_check(open("status", O_RDONLY) < 0 && errno == ESRCH, "status opens in the exited process's directory (%s)",
		   strerror(errno));
	zdtm_check(write(to_kid[1], "?", 1) == 1 && read(from_kid[0], &x, 1) == 1, "the child does not answer");
	zdtm_check(x == 'y', "the child's working directory is not the root's /proc directory");
	zdtm_pass();
}

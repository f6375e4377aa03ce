/*
 * zombie_core: zombies killed by core-dumping signals.
 *
 * State: three children that died and are not waited for: one of SIGSEGV
 * with a core written (core limit raised, working in a directory of its
 * own: wait status with the core flag), one of SIGABRT with RLIMIT_CORE 0
 * and one of SIGQUIT made undumpable (neither wrote a core: no flag).
 * Verified: each still a zombie; waitid(WNOWAIT) reports CLD_DUMPED for the
 * first, CLD_KILLED for the others, with the signal; waitpid's status and
 * WCOREDUMP; no core file (core, core.*) in its directory or the
 * children's.
 * Needs a core_pattern that names a file in the working directory.
 */
#include "zdtm.h"

#include <dirent.h>
#include <sys/prctl.h>
#include <sys/resource.h>

enum { SEGV_CORE, ABRT_NOLIMIT, QUIT_UNDUMPABLE, N };
static const int sigs[N] = { SIGSEGV, SIGABRT, SIGQUIT };
static pid_t kids[N];
static char dir[256];

/* Entries in dir other than . and .. that are named core or core.* */
static int entries(const char *path)
{
	DIR *d = opendir(path);
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d)))
		if (!strcmp(e->d_name, "core") || !strncmp(e->d_name, "core.", 5))
			n++;
	closedir(d);
	return n;
}

static void remove_cores(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char path[512];

	if (!d)
		return;
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		unlink(path);
	}
	closedir(d);
}

static pid_t child(int how)
{
	struct rlimit rl;
	pid_t pid = fork();

	if (pid < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (pid > 0)
		return pid;
	switch (how) {
	case SEGV_CORE:
		getrlimit(RLIMIT_CORE, &rl);
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_CORE, &rl) || chdir(dir))
			_exit(100);
		prctl(PR_SET_DUMPABLE, 1);
		break;
	case ABRT_NOLIMIT:
		rl.rlim_cur = 0;
		rl.rlim_max = RLIM_INFINITY;
		getrlimit(RLIMIT_CORE, &rl);
		rl.rlim_cur = 0;
		if (setrlimit(RLIMIT_CORE, &rl))
			_exit(100);
		break;
	case QUIT_UNDUMPABLE:
		prctl(PR_SET_DUMPABLE, 0);
		break;
	}
	signal(sigs[how], SIG_DFL);
	raise(sigs[how]);
	_exit(101);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* the one with a core was reaped */
		waitpid(kids[SEGV_CORE], NULL, 0);
		break;
	case 2: /* a core appears */
		close(open("core", O_CREAT | O_WRONLY, 0600));
		break;
	}
}

int main(void)
{
	char pattern[256];
	siginfo_t si;
	int i, st, before;

	zdtm_init();
	if (zdtm_read_file("/proc/sys/kernel/core_pattern", pattern, sizeof(pattern)) <= 0)
		zdtm_die("read core_pattern: %s", strerror(errno));
	if (pattern[0] == '|' || pattern[0] == '@' || strchr(pattern, '/'))
		zdtm_die("core_pattern %s does not write cores into the working directory", pattern);
	if (!getcwd(dir, sizeof(dir) - 16))
		zdtm_die("getcwd: %s", strerror(errno));
	strcat(dir, "/cores");
	if (mkdir(dir, 0700) && errno != EEXIST)
		zdtm_die("mkdir %s: %s", dir, strerror(errno));
	before = entries(".");
	for (i = 0; i < N; i++) {
		kids[i] = child(i);
		if (waitid(P_PID, kids[i], &si, WEXITED | WNOWAIT))
			zdtm_die("waitid %d: %s", kids[i], strerror(errno));
		if (si.si_status != sigs[i] || si.si_code != (i == SEGV_CORE ? CLD_DUMPED : CLD_KILLED))
			zdtm_die("child %d ended with code %d status %d", i, si.si_code, si.si_status);
	}
	if (entries(dir) < 1)
		zdtm_die("no core written in %s", dir);
	remove_cores();
	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (i = 0; i < N; i++) {
		memset(&si, 0, sizeof(si));
		zdtm_check(waitid(P_PID, kids[i], &si, WEXITED | WNOWAIT) == 0, "waitid(WNOWAIT) %d: %s", kids[i], strerror(errno));
		zdtm_check(si.si_status == sigs[i] && si.si_code == (i == SEGV_CORE ? CLD_DUMPED : CLD_KILLED),
			   "child %d: code %d status %d", i, si.si_code, si.si_status);
	}
	zdtm_check(entries(".") == before && entries(dir) == 0, "files appeared: %d here (was %d), %d in %s", entries("."), before,
		   entries(dir), dir);
	for (i = 0; i < N; i++) {
		zdtm_check(waitpid(kids[i], &st, 0) == kids[i], "waitpid %d: %s", kids[i], strerror(errno));
		zdtm_check(WIFSIGNALED(st) && WTERMSIG(st) == sigs[i] && !!WCOREDUMP(st) == (i == SEGV_CORE),
			   "child %d: wait status %#x", i, st);
	}
	zdtm_pass();
}

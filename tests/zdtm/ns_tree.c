/*
 * ns_tree: a tree in its own pid, mount, net, uts and ipc namespaces.
 *
 * Run as: unshare --fork --pid --mount-proc --net --uts --ipc ns_tree
 * so the tree is unshare (root, in the harness's namespaces) -> this program
 * (pid 1 in the new pid namespace) -> a child (pid 2). The harness sends
 * SIGTERM to pid 1 (unshare blocks SIGTERM) and passes its own namespace
 * inodes in ZDTM_OUTER_NS ("mnt:N net:N uts:N ipc:N pid:N").
 * State: hostname and domainname set inside; /proc of the new pid namespace
 * mounted in the new mount namespace; a network namespace with only lo.
 * Verified by pid 1 and by the child: pids 1 and 2 and their parent links,
 * hostname and domainname, /proc/self/stat showing the inner pid, that every
 * namespace differs from the harness's, that the network namespace has only
 * lo and the ipc namespace no SysV objects.
 */
#include "zdtm.h"

#include <sys/utsname.h>
#include <sys/wait.h>

#define HOSTNAME "lpm-zdtm-ns"
#define DOMAIN "zdtm.lpm"

static volatile sig_atomic_t got_usr1;
static char buf[8192];

static void on_usr1(int sig)
{
	(void)sig;
	got_usr1 = 1;
}

/* Checks the namespace state this process sees; returns an error or NULL. */
static const char *check_ns(pid_t want_pid, pid_t want_ppid, char *msg, size_t size)
{
	static const char *kinds[] = { "mnt", "net", "uts", "ipc", "pid" };
	const char *outer = getenv("ZDTM_OUTER_NS");
	struct utsname u;
	char path[64], *p;

	if (getpid() != want_pid || getppid() != want_ppid)
		return snprintf(msg, size, "pid %d ppid %d, expected %d and %d", getpid(), getppid(),
				want_pid, want_ppid), msg;
	if (uname(&u) || strcmp(u.nodename, HOSTNAME) || strcmp(u.domainname, DOMAIN))
		return snprintf(msg, size, "hostname %s domainname %s", u.nodename, u.domainname), msg;
	if (zdtm_read_file("/proc/self/stat", buf, sizeof(buf)) <= 0 || atoi(buf) != want_pid)
		return snprintf(msg, size, "/proc/self/stat shows pid %d: /proc is not the inner one",
				atoi(buf)), msg;
	if (!outer)
		return "ZDTM_OUTER_NS is not set";
	for (int i = 0; i < 5; i++) {
		struct stat st;
		char key[16];
		snprintf(path, sizeof(path), "/proc/self/ns/%s", kinds[i]);
		snprintf(key, sizeof(key), "%s:", kinds[i]);
		p = strstr(outer, key);
		if (!p || stat(path, &st))
			return snprintf(msg, size, "cannot compare the %s namespace", kinds[i]), msg;
		if ((unsigned long)st.st_ino == strtoul(p + strlen(key), NULL, 10))
			return snprintf(msg, size, "in the harness's %s namespace", kinds[i]), msg;
	}
	if (zdtm_read_file("/proc/self/net/dev", buf, sizeof(buf)) <= 0)
		return "cannot read /proc/self/net/dev";
	p = strchr(buf, '\n');
	p = p ? strchr(p + 1, '\n') : NULL; /* two header lines */
	if (!p || strncmp(p + 1 + strspn(p + 1, " "), "lo:", 3) || strchr(strchr(p + 1, '\n') + 1, ':'))
		return snprintf(msg, size, "network devices other than lo: %.200s", p ? p + 1 : buf), msg;
	for (int i = 0; i < 3; i++) {
		static const char *ipc[] = { "/proc/sysvipc/shm", "/proc/sysvipc/sem", "/proc/sysvipc/msg" };
		if (zdtm_read_file(ipc[i], buf, sizeof(buf)) < 0)
			return snprintf(msg, size, "cannot read %s", ipc[i]), msg;
		p = strchr(buf, '\n');
		if (!p || p[1])
			return snprintf(msg, size, "%s is not empty", ipc[i]), msg;
	}
	return NULL;
}

int main(void)
{
	char msg[512];
	const char *err;
	struct sigaction sa;
	pid_t child;
	int status;

	zdtm_init();
	if (getpid() != 1)
		zdtm_die("not pid 1 (run me under unshare --fork --pid --mount-proc)");
	if (sethostname(HOSTNAME, strlen(HOSTNAME)) || setdomainname(DOMAIN, strlen(DOMAIN)))
		zdtm_die("sethostname: %s", strerror(errno));
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	if ((err = check_ns(1, 0, msg, sizeof(msg))))
		zdtm_die("%s", err);
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		if (getpid() != 2)
			zdtm_die("child is pid %d, not 2", getpid());
		while (!got_usr1)
			zdtm_sleep_ms(20);
		if ((err = check_ns(2, 1, msg, sizeof(msg)))) {
			zdtm_log("child: %s", err);
			_exit(1);
		}
		_exit(0);
	}
	zdtm_kid(child);

	zdtm_ready();
	zdtm_wait();
	if (zdtm_sabotage == 1)
		sethostname("other", 5);
	if (zdtm_sabotage == 2)
		kill(child, SIGKILL);

	if ((err = check_ns(1, 0, msg, sizeof(msg))))
		zdtm_fail("pid 1: %s", err);
	zdtm_check(kill(child, SIGUSR1) == 0, "the child (pid 2) is gone: %s", strerror(errno));
	status = zdtm_wait_kid(child, "answer");
	zdtm_check(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		   "the child failed its checks (status %#x, see the log)", status);
	zdtm_pass();
}

/*
 * process_state: per-process and per-task attributes.
 *
 * State: rlimits (RLIMIT_NOFILE 512/1024, RLIMIT_CORE 4096/1 MiB,
 * RLIMIT_MSGQUEUE 100000/200000: only lowered, raising needs CAP_SYS_RESOURCE), umask 027, cwd in a directory with a space
 * in its name, comm via PR_SET_NAME, personality ADDR_NO_RANDOMIZE, nice 7,
 * PR_SET_NO_NEW_PRIVS, timer slack, PR_SET_THP_DISABLE, PR_SET_CHILD_SUBREAPER,
 * glibc's robust futex list and rseq registration.
 * Verified: every rlimit, umask, cwd (path and inode), comm, personality,
 * nice, the prctl values, the robust list head and length (and that the list
 * is still empty), that rseq is registered at the same area, length and
 * signature (rseq() answers EBUSY) and that the kernel keeps the area's
 * cpu_id current, and that /proc/self/cmdline, environ, auxv and exe are
 * unchanged.
 */
#include "zdtm.h"

#include <sched.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/syscall.h>

#define SLACK_NS 123456
#define NICE 7
#define PERSONA (PER_LINUX | ADDR_NO_RANDOMIZE)
#define CWD_NAME "ps cwd.d"

static struct rlimit limits[RLIM_NLIMITS];
static char cwd[4096];
static struct stat cwd_st;
static void *robust_head;
static size_t robust_len;
static struct rseq *rseq_area;
static unsigned int rseq_len;
static char cmdline[4096], environ_[16384], auxv[4096], exe[4096];
static int cmdline_n, environ_n, auxv_n;
static char buf[16384];

/* 1 when rseq is registered at rseq_area with len and RSEQ_SIG, 0 otherwise. */
static int rseq_registered(unsigned int len)
{
	long r = syscall(SYS_rseq, rseq_area, len, 0, RSEQ_SIG);
	if (r == 0) {
		/* It was not registered: the probe just registered it; undo. */
		syscall(SYS_rseq, rseq_area, len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
		return 0;
	}
	return errno == EBUSY;
}

static void snapshot(const char *path, char *out, size_t size, int *n)
{
	*n = zdtm_read_file(path, out, size);
	if (*n < 0)
		zdtm_die("read %s: %s", path, strerror(errno));
}

static void check_same(const char *path, const char *before, int n)
{
	int m = zdtm_read_file(path, buf, sizeof(buf));
	zdtm_check(m == n && !memcmp(buf, before, n), "%s changed (%d bytes, were %d)", path, m, n);
}

static void sabotage(void)
{
	struct rlimit rl = { 256, 1024 };

	switch (zdtm_sabotage) {
	case 1:
		setrlimit(RLIMIT_NOFILE, &rl);
		break;
	case 2:
		umask(022);
		break;
	case 3:
		chdir("/");
		break;
	case 4:
		prctl(PR_SET_NAME, "other");
		break;
	case 5: /* rseq not registered after restore */
		syscall(SYS_rseq, rseq_area, rseq_len, RSEQ_FLAG_UNREGISTER, RSEQ_SIG);
		break;
	case 6:
		prctl(PR_SET_TIMERSLACK, 50000);
		break;
	case 7:
		syscall(SYS_set_robust_list, (char *)robust_head + 8, robust_len);
		break;
	}
}

int main(void)
{
	char name[32], path[4096];
	struct rlimit rl;
	struct stat st;
	void *head;
	size_t len;
	int ok;

	zdtm_init();
	rl.rlim_cur = 512, rl.rlim_max = 1024;
	if (setrlimit(RLIMIT_NOFILE, &rl))
		zdtm_die("RLIMIT_NOFILE: %s", strerror(errno));
	rl.rlim_cur = 4096, rl.rlim_max = 1 << 20;
	if (setrlimit(RLIMIT_CORE, &rl))
		zdtm_die("RLIMIT_CORE: %s", strerror(errno));
	rl.rlim_cur = 100000, rl.rlim_max = 200000;
	if (setrlimit(RLIMIT_MSGQUEUE, &rl))
		zdtm_die("RLIMIT_MSGQUEUE: %s", strerror(errno));
	for (int r = 0; r < RLIM_NLIMITS; r++)
		getrlimit(r, &limits[r]);
	umask(027);
	zdtm_path(path, sizeof(path), CWD_NAME);
	if (mkdir(path, 0750) || chdir(path) || !getcwd(cwd, sizeof(cwd)) || stat(".", &cwd_st))
		zdtm_die("cwd %s: %s", path, strerror(errno));
	if (prctl(PR_SET_NAME, "zdtm-ps-name") || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
	    prctl(PR_SET_TIMERSLACK, SLACK_NS) || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) ||
	    prctl(PR_SET_CHILD_SUBREAPER, 1))
		zdtm_die("prctl: %s", strerror(errno));
	if (personality(PERSONA) < 0 || setpriority(PRIO_PROCESS, 0, NICE))
		zdtm_die("personality/nice: %s", strerror(errno));
	if (syscall(SYS_get_robust_list, 0, &robust_head, &robust_len) || !robust_head)
		zdtm_die("get_robust_list: %s", strerror(errno));
	if (__rseq_size == 0)
		zdtm_die("glibc did not register rseq (kernel without rseq, or glibc.pthread.rseq=0)");
	rseq_area = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	if (rseq_registered(32))
		rseq_len = 32;
	else if (rseq_registered(__rseq_size))
		rseq_len = __rseq_size;
	else
		zdtm_die("cannot find glibc's rseq registration");
	snapshot("/proc/self/cmdline", cmdline, sizeof(cmdline), &cmdline_n);
	snapshot("/proc/self/environ", environ_, sizeof(environ_), &environ_n);
	snapshot("/proc/self/auxv", auxv, sizeof(auxv), &auxv_n);
	if (readlink("/proc/self/exe", exe, sizeof(exe) - 1) <= 0)
		zdtm_die("readlink exe");

	zdtm_ready();
	zdtm_wait();
	sabotage();

	for (int r = 0; r < RLIM_NLIMITS; r++) {
		zdtm_check(getrlimit(r, &rl) == 0, "getrlimit %d", r);
		zdtm_check(rl.rlim_cur == limits[r].rlim_cur && rl.rlim_max == limits[r].rlim_max,
			   "rlimit %d is %llu/%llu, was %llu/%llu", r, (unsigned long long)rl.rlim_cur,
			   (unsigned long long)rl.rlim_max, (unsigned long long)limits[r].rlim_cur,
			   (unsigned long long)limits[r].rlim_max);
	}
	zdtm_check(limits[RLIMIT_NOFILE].rlim_cur == 512 && limits[RLIMIT_CORE].rlim_max == 1 << 20,
		   "rlimits at setup");
	{
		mode_t m = umask(0);
		umask(m);
		zdtm_check(m == 027, "umask %03o, expected 027", m);
	}
	zdtm_check(getcwd(path, sizeof(path)) && !strcmp(path, cwd), "cwd is %s, was %s", path, cwd);
	zdtm_check(stat(".", &st) == 0 && st.st_ino == cwd_st.st_ino && st.st_dev == cwd_st.st_dev,
		   "cwd is another directory with the same path");
	memset(name, 0, sizeof(name));
	prctl(PR_GET_NAME, name);
	zdtm_check(!strcmp(name, "zdtm-ps-name"), "comm is %s", name);
	zdtm_check(personality(0xffffffff) == PERSONA, "personality %#x, expected %#x",
		   personality(0xffffffff), PERSONA);
	errno = 0;
	zdtm_check(getpriority(PRIO_PROCESS, 0) == NICE && !errno, "nice %d, expected %d",
		   getpriority(PRIO_PROCESS, 0), NICE);
	zdtm_check(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "no_new_privs lost");
	zdtm_check(prctl(PR_GET_TIMERSLACK) == SLACK_NS, "timer slack %d, expected %d",
		   prctl(PR_GET_TIMERSLACK), SLACK_NS);
	zdtm_check(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP disable lost");
	{
		int sub = 0;
		prctl(PR_GET_CHILD_SUBREAPER, &sub);
		zdtm_check(sub == 1, "child subreaper flag lost");
	}
	zdtm_check(syscall(SYS_get_robust_list, 0, &head, &len) == 0, "get_robust_list: %s",
		   strerror(errno));
	zdtm_check(head == robust_head && len == robust_len, "robust list %p/%zu, was %p/%zu", head,
		   len, robust_head, robust_len);
	zdtm_check(*(void **)head == head, "the robust list is no longer empty (next %p)", *(void **)head);
	zdtm_check(rseq_registered(rseq_len),
		   "rseq is not registered at %p (len %u, sig %#x) any more", (void *)rseq_area,
		   rseq_len, RSEQ_SIG);
	ok = 0;
	for (int i = 0; i < 1000 && !ok; i++) {
		unsigned int cpu = ~0U;
		sched_yield();
		syscall(SYS_getcpu, &cpu, NULL, NULL);
		ok = (int)__atomic_load_n(&rseq_area->cpu_id, __ATOMIC_RELAXED) == (int)cpu;
	}
	zdtm_check(ok, "rseq cpu_id %d never matches getcpu", (int)rseq_area->cpu_id);
	check_same("/proc/self/cmdline", cmdline, cmdline_n);
	check_same("/proc/self/environ", environ_, environ_n);
	check_same("/proc/self/auxv", auxv, auxv_n);
	memset(path, 0, sizeof(path));
	zdtm_check(readlink("/proc/self/exe", path, sizeof(path) - 1) > 0 && !strcmp(path, exe),
		   "exe is %s, was %s", path, exe);
	zdtm_pass();
}

/*
 * sched.h: what sched_policy.c and sched_rt.c share: sched_setattr and
 * sched_getattr, and the check of one thread's policy, flags, priority
 * and nice values against what it should have.
 */
#ifndef ZDTM_SCHED_H
#define ZDTM_SCHED_H

#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#ifndef SCHED_RESET_ON_FORK
#define SCHED_RESET_ON_FORK 0x40000000
#endif
#define SCHED_FLAG_RESET_ON_FORK 0x01

struct attr {
	uint32_t size;
	uint32_t policy;
	uint64_t flags;
	int32_t nice;
	uint32_t priority;
	uint64_t runtime, deadline, period;
	uint32_t util_min, util_max;
};

struct want {
	const char *name;
	uint32_t policy;
	uint64_t flags;
	int32_t nice; /* as sched_getattr shows it: 0 for real-time policies */
	uint32_t priority;
	int32_t stat_nice; /* as /proc/PID/task/TID/stat shows it: kept aside under a real-time policy */
};

static int getattr(pid_t tid, struct attr *a)
{
	memset(a, 0, sizeof(*a));
	return syscall(SYS_sched_getattr, tid, a, sizeof(*a), 0);
}

static int setattr(pid_t tid, const struct want *w)
{
	struct attr a = { .size = 48, .policy = w->policy, .flags = w->flags, .nice = w->stat_nice, .priority = w->priority };
	/* The nice value of an RT thread is kept for a later return to a fair policy. */
	if (setpriority(PRIO_PROCESS, tid, w->stat_nice))
		return -1;
	return syscall(SYS_sched_setattr, tid, &a, 0);
}

/* Why thread `tid` (a child process when is_child: its own /proc/PID/stat) does
 * not have `w`, or NULL. */
static const char *differs(pid_t tid, int is_child, const struct want *w, char *msg, size_t size)
{
	struct attr a;
	char path[64], buf[1024];
	const char *p;
	long nice = 99;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", tid);
	if (is_child)
		snprintf(path, sizeof(path), "/proc/%d/stat", tid);
	if (zdtm_read_file(path, buf, sizeof(buf)) > 0 && (p = strrchr(buf, ')'))) {
		/* Field 19 (nice) is the 17th after the command. */
		for (int f = 0; f < 17 && p; f++)
			p = strchr(p + 1, ' ');
		if (p)
			nice = strtol(p + 1, NULL, 10);
	}
	if (nice != w->stat_nice)
		return snprintf(msg, size, "%s (tid %d): nice %ld in stat, expected %d", w->name, tid, nice, w->stat_nice), msg;
	if (getattr(tid, &a))
		return snprintf(msg, size, "sched_getattr(%d): %s", tid, strerror(errno)), msg;
	if (a.policy != w->policy || a.flags != w->flags || a.priority != w->priority || a.nice != w->nice)
		return snprintf(msg, size, "%s (tid %d): policy %u flags %#llx nice %d priority %u; expected policy %u flags %#llx nice %d priority %u",
				w->name, tid, a.policy, (unsigned long long)a.flags, a.nice, a.priority, w->policy,
				(unsigned long long)w->flags, w->nice, w->priority),
		       msg;
	return NULL;
}

#endif

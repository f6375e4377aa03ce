/*
 * creds: credentials. Must start as root.
 *
 * State, set up as root: bounding set without CAP_SYS_BOOT; supplementary
 * groups 1000, 2000, 3000; real/effective/saved gids 1000/1001/1002 and uids
 * 1000/1001/1002 (distinct, so a swap shows); PR_SET_KEEPCAPS kept the
 * permitted set across the uid change, then capset leaves permitted
 * {KILL, NET_BIND_SERVICE, SYS_CHROOT}, effective {KILL, NET_BIND_SERVICE},
 * inheritable and ambient {SYS_CHROOT}; the dumpable flag as the uid change
 * left it.
 * Verified: getresuid, getresgid, getgroups, the Uid/Gid/Groups/Cap* lines
 * of /proc/self/status, securebits, keepcaps and dumpable.
 */
#include "zdtm.h"

#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

static char status_before[8192], status_now[8192];
static int dumpable, securebits, keepcaps;
static const gid_t groups[] = { 1000, 2000, 3000 };

#define BIT(c) (1U << (c))

static int set_caps(uint32_t eff, uint32_t prm, uint32_t inh)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2];

	memset(d, 0, sizeof(d));
	d[0].effective = eff;
	d[0].permitted = prm;
	d[0].inheritable = inh;
	return syscall(SYS_capset, &h, d);
}

static void check_field(const char *key)
{
	char a[256], b[256];

	zdtm_check(zdtm_field(status_now, key, a, sizeof(a)), "no %s in /proc/self/status", key);
	zdtm_check(zdtm_field(status_before, key, b, sizeof(b)), "no %s at setup", key);
	zdtm_check(!strcmp(a, b), "%s is [%s], was [%s]", key, a, b);
}

int main(void)
{
	const uint32_t prm = BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE) | BIT(CAP_SYS_CHROOT);
	const uint32_t eff = BIT(CAP_KILL) | BIT(CAP_NET_BIND_SERVICE);
	const uint32_t inh = BIT(CAP_SYS_CHROOT);
	uid_t r, e, s;
	gid_t rg, eg, sg, got[16];
	int n;

	zdtm_init();
	if (geteuid() != 0)
		zdtm_die("creds must start as root");
	if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) || prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
		zdtm_die("prctl: %s", strerror(errno));
	if (setgroups(3, groups) || setresgid(1000, 1001, 1002) || setresuid(1000, 1001, 1002))
		zdtm_die("set ids: %s", strerror(errno));
	if (set_caps(eff, prm, inh))
		zdtm_die("capset: %s", strerror(errno));
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_SYS_CHROOT, 0, 0))
		zdtm_die("ambient raise: %s", strerror(errno));
	dumpable = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
	securebits = prctl(PR_GET_SECUREBITS, 0, 0, 0, 0);
	keepcaps = prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0);
	if (zdtm_read_file("/proc/self/status", status_before, sizeof(status_before)) <= 0)
		zdtm_die("read status: %s", strerror(errno));

	zdtm_ready();
	zdtm_wait();
	switch (zdtm_sabotage) {
	case 1: /* effective uid not restored */
		setresuid(-1, 1000, -1);
		break;
	case 2: /* a capability lost */
		set_caps(BIT(CAP_NET_BIND_SERVICE), prm, inh);
		break;
	case 3: /* dumpable flag not restored */
		prctl(PR_SET_DUMPABLE, !dumpable, 0, 0, 0);
		break;
	case 4: /* ambient set not restored */
		prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
		break;
	}

	zdtm_check(getresuid(&r, &e, &s) == 0 && r == 1000 && e == 1001 && s == 1002,
		   "uids %u/%u/%u, expected 1000/1001/1002", r, e, s);
	zdtm_check(getresgid(&rg, &eg, &sg) == 0 && rg == 1000 && eg == 1001 && sg == 1002,
		   "gids %u/%u/%u, expected 1000/1001/1002", rg, eg, sg);
	n = getgroups(16, got);
	zdtm_check(n == 3 && got[0] == 1000 && got[1] == 2000 && got[2] == 3000,
		   "%d supplementary groups, expected 1000 2000 3000", n);
	zdtm_check(zdtm_read_file("/proc/self/status", status_now, sizeof(status_now)) > 0,
		   "read status");
	check_field("Uid");
	check_field("Gid");
	check_field("Groups");
	check_field("CapInh");
	check_field("CapPrm");
	check_field("CapEff");
	check_field("CapBnd");
	check_field("CapAmb");
	{
		char v[64], want[64];
		snprintf(want, sizeof(want), "%016x", eff);
		zdtm_check(zdtm_field(status_now, "CapEff", v, sizeof(v)) && !strcmp(v, want),
			   "CapEff %s, expected %s", v, want);
		snprintf(want, sizeof(want), "%016x", inh);
		zdtm_check(zdtm_field(status_now, "CapAmb", v, sizeof(v)) && !strcmp(v, want),
			   "CapAmb %s, expected %s", v, want);
	}
	zdtm_check(prctl(PR_CAPBSET_READ, CAP_SYS_BOOT, 0, 0, 0) == 0, "CAP_SYS_BOOT back in the bounding set");
	zdtm_check(prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == dumpable, "dumpable %d, was %d",
		   prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), dumpable);
	zdtm_check(prctl(PR_GET_SECUREBITS, 0, 0, 0, 0) == securebits, "securebits %#x, were %#x",
		   prctl(PR_GET_SECUREBITS, 0, 0, 0, 0), securebits);
	zdtm_check(prctl(PR_GET_KEEPCAPS, 0, 0, 0, 0) == keepcaps, "keepcaps changed");
	zdtm_pass();
}

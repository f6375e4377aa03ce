/*
 * vdso_unmapped: processes that unmapped their vDSO.
 *
 * State: the root unmapped [vdso], [vvar] and [vvar_vclock]; its child
 * unmapped [vdso] only, keeping the others. Neither calls into the vDSO
 * again (glibc would jump to the old address: every call here is a
 * syscall).
 * Verified: /proc/PID/maps of both exactly as before (no special area
 * comes back), /proc/self/auxv as before (AT_SYSINFO_EHDR names the old
 * address), and a fork after restore runs.
 */
#include "zdtm.h"

#include <sys/mman.h>

static char maps_root[16384], maps_child[16384], auxv[1024], buf[16384];
static int auxv_len;
static pid_t child;
static unsigned long vdso_at;

/* Unmaps every special area whose name is in names (a "|"-separated list). */
static void unmap_specials(const char *names)
{
	char text[16384], name[64];
	char *line = text, *nl;
	unsigned long s, e;
	int n;

	n = zdtm_read_file("/proc/self/maps", text, sizeof(text));
	if (n <= 0)
		zdtm_die("read maps: %s", strerror(errno));
	for (; (nl = strchr(line, '\n')); line = nl + 1) {
		*nl = 0;
		name[0] = 0;
		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %63s", &s, &e, name) < 2 || name[0] != '[')
			continue;
		if (!strcmp(name, "[vdso]"))
			vdso_at = s;
		if (strstr(names, name) && munmap((void *)s, e - s))
			zdtm_die("munmap %s: %s", name, strerror(errno));
	}
}

static int read_maps(pid_t pid, char *out, size_t len)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	return zdtm_read_file(path, out, len);
}

static void sabotage(void)
{
	switch (zdtm_sabotage) {
	case 1: /* an area where the vDSO was */
		mmap((void *)vdso_at, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
		break;
	case 2: /* the child is gone */
		kill(child, SIGKILL);
		waitpid(child, NULL, 0);
		break;
	}
}

int main(void)
{
	int ready[2], st;
	pid_t p;
	char c;

	zdtm_init();
	if (pipe(ready))
		zdtm_die("pipe: %s", strerror(errno));
	child = fork();
	if (child < 0)
		zdtm_die("fork: %s", strerror(errno));
	if (child == 0) {
		unmap_specials("[vdso]");
		if (write(ready[1], "r", 1) != 1)
			_exit(3);
		for (;;)
			pause();
	}
	zdtm_kid(child);
	if (read(ready[0], &c, 1) != 1)
		zdtm_die("the child did not unmap its vDSO");
	unmap_specials("[vdso]|[vvar]|[vvar_vclock]");
	if (read_maps(getpid(), maps_root, sizeof(maps_root)) <= 0 || read_maps(child, maps_child, sizeof(maps_child)) <= 0)
		zdtm_die("read maps: %s", strerror(errno));
	if (strstr(maps_root, "[vdso]") || strstr(maps_root, "[vvar") || strstr(maps_child, "[vdso]") || !strstr(maps_child, "[vvar]"))
		zdtm_die("the specials were not unmapped as meant");
	auxv_len = zdtm_read_file("/proc/self/auxv", auxv, sizeof(auxv));
	if (auxv_len <= 0)
		zdtm_die("read auxv: %s", strerror(errno));
	zdtm_ready();
	zdtm_wait();
	sabotage();

	zdtm_check(read_maps(getpid(), buf, sizeof(buf)) > 0 && !strcmp(buf, maps_root), "the root's maps changed:\n%s", buf);
	zdtm_check(read_maps(child, buf, sizeof(buf)) > 0 && !strcmp(buf, maps_child), "the child's maps changed:\n%s", buf);
	zdtm_check(zdtm_read_file("/proc/self/auxv", buf, sizeof(buf)) == auxv_len && !memcmp(buf, auxv, auxv_len), "auxv changed");
	p = fork();
	if (p == 0)
		_exit(strstr(maps_root, "[vdso]") ? 1 : 0);
	zdtm_check(p > 0 && waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0, "a fork after restore ended with %#x", st);
	zdtm_pass();
}

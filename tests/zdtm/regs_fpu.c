/*
 * regs_fpu: registers and FPU/vector state.
 *
 * State: one asm loop holds known values in ymm0-ymm14 (AVX2) or, when the
 * CPU has AVX-512 F+BW, in zmm0-zmm30 and the opmask registers k1-k7; in the
 * eight x87 stack registers; in r12-r15; a non-default MXCSR and x87 control
 * word; a gs base pointing to a magic word. Every iteration compares each
 * register with its expected value (and fs:0 with the TCB pointer); every
 * 4096 iterations it sleeps 1 ms in a raw nanosleep, so a checkpoint finds
 * the task either computing or inside a syscall.
 * Verified on SIGTERM: no iteration ever saw a wrong value, the x87 stack
 * still holds its values, fs base, the TLS variable's address and value and
 * pthread_self are unchanged.
 * ZDTM_REGS_AVX2_ONLY=1 forces the AVX2 loop on AVX-512 machines.
 */
#include "zdtm.h"

#include <asm/prctl.h>
#include <cpuid.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <ucontext.h>

#define MXCSR_VAL 0xffc0 /* all masked, DAZ, round toward zero, FTZ */
#define MXCSR_DEF 0x1f80
#define FCW_VAL 0x067f /* double precision, round down */
#define FCW_DEF 0x037f
#define R12_VAL 0x1212121212121212ULL
#define R13_VAL 0x1313131313131313ULL
#define R14_VAL 0x1414141414141414ULL
#define R15_VAL 0x1515151515151515ULL
#define GS_MAGIC 0x67736261736521ULL

struct regs {
	uint64_t z[32][8]; /* zmm (or ymm: first 4 words) expected values */
	uint64_t k[8];
	double x87_in[8];
	double x87_out[8];
	uint64_t count;
	uint64_t gs_magic;
	uint64_t fs_base;
	uint32_t mxcsr_val, mxcsr_def, mxcsr_out;
	uint16_t fcw_val, fcw_def, fcw_out;
	struct timespec ts;
} __attribute__((aligned(64)));

static struct regs R;
static uint64_t gs_block[4];
static __thread uint64_t tls_val = 0x746c73;
static uint64_t *tls_addr;
static uint64_t fs_at_setup;
static pthread_t self_at_setup;
static int use_avx512;
static unsigned int ymm_hi_off, zmm_hi_off, zmm16_off; /* xsave offsets */

#define OFF(f) [f] "i"(offsetof(struct regs, f))
#define GOFF(f) "%c[" #f "]"

#define COMMON_SETUP                                      \
	"ldmxcsr " GOFF(mxcsr_val) "(%[b])\n\t"           \
	"fninit\n\t"                                      \
	"fldcw " GOFF(fcw_val) "(%[b])\n\t"               \
	"fldl " GOFF(x87_in) "+0(%[b])\n\t"               \
	"fldl " GOFF(x87_in) "+8(%[b])\n\t"               \
	"fldl " GOFF(x87_in) "+16(%[b])\n\t"              \
	"fldl " GOFF(x87_in) "+24(%[b])\n\t"              \
	"fldl " GOFF(x87_in) "+32(%[b])\n\t"              \
	"fldl " GOFF(x87_in) "+40(%[b])\n\t"              \
	"fldl " GOFF(x87_in) "+48(%[b])\n\t"              \
	"fldl " GOFF(x87_in) "+56(%[b])\n\t"              \
	"movabs $0x1212121212121212, %%r12\n\t"           \
	"movabs $0x1313131313131313, %%r13\n\t"           \
	"movabs $0x1414141414141414, %%r14\n\t"           \
	"movabs $0x1515151515151515, %%r15\n\t"

/* Checks that set ecx to an error code and jump to 8 on a mismatch. */
#define CHK_GPR(n)                                        \
	"mov $(300+" #n "), %%ecx\n\t"                    \
	"movabs $0x" #n #n #n #n #n #n #n #n ", %%rax\n\t" \
	"cmp %%rax, %%r" #n "\n\t"                        \
	"jne 8f\n\t"

#define COMMON_CHECKS                                     \
	CHK_GPR(12) CHK_GPR(13) CHK_GPR(14) CHK_GPR(15)   \
	"mov $400, %%ecx\n\t"                             \
	"sub $8, %%rsp\n\t"                               \
	"stmxcsr (%%rsp)\n\t"                             \
	"mov (%%rsp), %%eax\n\t"                          \
	"fnstcw (%%rsp)\n\t"                              \
	"movzwl (%%rsp), %%edx\n\t"                       \
	"add $8, %%rsp\n\t"                               \
	"cmp " GOFF(mxcsr_val) "(%[b]), %%eax\n\t"        \
	"jne 8f\n\t"                                      \
	"mov $401, %%ecx\n\t"                             \
	"cmpw " GOFF(fcw_val) "(%[b]), %%dx\n\t"          \
	"jne 8f\n\t"                                      \
	"mov $402, %%ecx\n\t"                             \
	"mov %%gs:0, %%rax\n\t"                           \
	"cmp " GOFF(gs_magic) "(%[b]), %%rax\n\t"         \
	"jne 8f\n\t"                                      \
	"mov $403, %%ecx\n\t"                             \
	"mov %%fs:0, %%rax\n\t"                           \
	"cmp " GOFF(fs_base) "(%[b]), %%rax\n\t"          \
	"jne 8f\n\t"                                      \
	"incq " GOFF(count) "(%[b])\n\t"                  \
	"cmpl $0, %[stop]\n\t"                            \
	"jne 7f\n\t"                                      \
	"testq $0xfff, " GOFF(count) "(%[b])\n\t"        \
	"jnz 1b\n\t"                                      \
	"mov $35, %%eax\n\t" /* nanosleep(&ts, NULL) */   \
	"lea " GOFF(ts) "(%[b]), %%rdi\n\t"               \
	"xor %%esi, %%esi\n\t"                            \
	"syscall\n\t"                                     \
	"jmp 1b\n\t"                                      \
	"7:\n\t"                                          \
	"mov $-1, %%ecx\n\t"                              \
	"8:\n\t"                                          \
	"fstpl " GOFF(x87_out) "+0(%[b])\n\t"             \
	"fstpl " GOFF(x87_out) "+8(%[b])\n\t"             \
	"fstpl " GOFF(x87_out) "+16(%[b])\n\t"            \
	"fstpl " GOFF(x87_out) "+24(%[b])\n\t"            \
	"fstpl " GOFF(x87_out) "+32(%[b])\n\t"            \
	"fstpl " GOFF(x87_out) "+40(%[b])\n\t"            \
	"fstpl " GOFF(x87_out) "+48(%[b])\n\t"            \
	"fstpl " GOFF(x87_out) "+56(%[b])\n\t"            \
	"stmxcsr " GOFF(mxcsr_out) "(%[b])\n\t"           \
	"fnstcw " GOFF(fcw_out) "(%[b])\n\t"              \
	"ldmxcsr " GOFF(mxcsr_def) "(%[b])\n\t"           \
	"fldcw " GOFF(fcw_def) "(%[b])\n\t"               \
	"vzeroupper\n\t"                                  \
	"mov %%ecx, %[res]\n\t"

#define OPERANDS                                                                    \
	: [res] "=r"(res)                                                           \
	: [b] "r"(&R), [stop] "m"(zdtm_stop), OFF(z), OFF(k), OFF(x87_in), OFF(x87_out), \
	  OFF(count), OFF(gs_magic), OFF(fs_base), OFF(mxcsr_val), OFF(mxcsr_def),  \
	  OFF(mxcsr_out), OFF(fcw_val), OFF(fcw_def), OFF(fcw_out), OFF(ts)

#define CLOBBERS_COMMON                                                              \
	"rax", "rcx", "rdx", "rdi", "rsi", "r11", "r12", "r13", "r14", "r15", "st", "st(1)", \
	"st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)", "memory", "cc"

#define YLD(n) "vmovdqa " GOFF(z) "+" #n "*64(%[b]), %%ymm" #n "\n\t"
#define YCHK(n)                                                     \
	"mov $" #n ", %%ecx\n\t"                                    \
	"vpxor " GOFF(z) "+" #n "*64(%[b]), %%ymm" #n ", %%ymm15\n\t" \
	"vptest %%ymm15, %%ymm15\n\t"                               \
	"jnz 8f\n\t"

__attribute__((target("avx2"), noinline)) static int loop_avx2(void)
{
	int res;

	asm volatile(COMMON_SETUP
		     YLD(0) YLD(1) YLD(2) YLD(3) YLD(4) YLD(5) YLD(6) YLD(7)
		     YLD(8) YLD(9) YLD(10) YLD(11) YLD(12) YLD(13) YLD(14)
		     "1:\n\t"
		     YCHK(0) YCHK(1) YCHK(2) YCHK(3) YCHK(4) YCHK(5) YCHK(6) YCHK(7)
		     YCHK(8) YCHK(9) YCHK(10) YCHK(11) YCHK(12) YCHK(13) YCHK(14)
		     COMMON_CHECKS
		     OPERANDS
		     : CLOBBERS_COMMON, "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
		       "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
		       "xmm15");
	return res;
}

#define ZLD(n) "vmovdqa64 " GOFF(z) "+" #n "*64(%[b]), %%zmm" #n "\n\t"
#define ZCHK(n)                                                      \
	"mov $" #n ", %%ecx\n\t"                                     \
	"vpxorq " GOFF(z) "+" #n "*64(%[b]), %%zmm" #n ", %%zmm31\n\t" \
	"vptestmq %%zmm31, %%zmm31, %%k0\n\t"                        \
	"kortestw %%k0, %%k0\n\t"                                    \
	"jnz 8f\n\t"
#define KLD(n) "kmovq " GOFF(k) "+" #n "*8(%[b]), %%k" #n "\n\t"
#define KCHK(n)                                  \
	"mov $(200+" #n "), %%ecx\n\t"           \
	"kmovq %%k" #n ", %%rax\n\t"             \
	"cmp " GOFF(k) "+" #n "*8(%[b]), %%rax\n\t" \
	"jne 8f\n\t"

__attribute__((target("avx512f,avx512bw"), noinline)) static int loop_avx512(void)
{
	int res;

	asm volatile(COMMON_SETUP
		     ZLD(0) ZLD(1) ZLD(2) ZLD(3) ZLD(4) ZLD(5) ZLD(6) ZLD(7)
		     ZLD(8) ZLD(9) ZLD(10) ZLD(11) ZLD(12) ZLD(13) ZLD(14) ZLD(15)
		     ZLD(16) ZLD(17) ZLD(18) ZLD(19) ZLD(20) ZLD(21) ZLD(22) ZLD(23)
		     ZLD(24) ZLD(25) ZLD(26) ZLD(27) ZLD(28) ZLD(29) ZLD(30)
		     KLD(1) KLD(2) KLD(3) KLD(4) KLD(5) KLD(6) KLD(7)
		     "1:\n\t"
		     ZCHK(0) ZCHK(1) ZCHK(2) ZCHK(3) ZCHK(4) ZCHK(5) ZCHK(6) ZCHK(7)
		     ZCHK(8) ZCHK(9) ZCHK(10) ZCHK(11) ZCHK(12) ZCHK(13) ZCHK(14) ZCHK(15)
		     ZCHK(16) ZCHK(17) ZCHK(18) ZCHK(19) ZCHK(20) ZCHK(21) ZCHK(22) ZCHK(23)
		     ZCHK(24) ZCHK(25) ZCHK(26) ZCHK(27) ZCHK(28) ZCHK(29) ZCHK(30)
		     KCHK(1) KCHK(2) KCHK(3) KCHK(4) KCHK(5) KCHK(6) KCHK(7)
		     COMMON_CHECKS
		     OPERANDS
		     : CLOBBERS_COMMON, "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",
		       "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14",
		       "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",
		       "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30",
		       "xmm31", "k0", "k1", "k2", "k3", "k4", "k5", "k6", "k7");
	return res;
}

static unsigned int xsave_offset(unsigned int component)
{
	unsigned int eax, ebx, ecx, edx;

	if (!__get_cpuid_count(0xd, component, &eax, &ebx, &ecx, &edx))
		return 0;
	return ebx;
}

static volatile sig_atomic_t sabotaged;

/* SIGTERM: stop the loop; with ZDTM_SABOTAGE, first corrupt the saved state. */
static void on_term(int sig, siginfo_t *si, void *uc_)
{
	ucontext_t *uc = uc_;
	char *xsave = (char *)uc->uc_mcontext.fpregs;

	(void)sig;
	(void)si;
	if (zdtm_sabotage && __atomic_load_n(&R.count, __ATOMIC_RELAXED) == 0) {
		/* SIGTERM came before the register loop started (a loaded
		 * machine): the corrupted frame would be loaded over and go
		 * unnoticed. Ask again in 10 ms, from SIGALRM. */
		struct itimerval again = { { 0, 0 }, { 0, 10000 } };
		setitimer(ITIMER_REAL, &again, NULL);
		return;
	}
	switch (zdtm_sabotage) {
	case 1: /* xmm3 */
		uc->uc_mcontext.fpregs->_xmm[3].element[1] ^= 1;
		break;
	case 2: /* upper half of ymm5 */
		xsave[ymm_hi_off + 5 * 16] ^= 1;
		break;
	case 3: /* r13 */
		uc->uc_mcontext.gregs[REG_R13] ^= 1;
		break;
	case 4: /* MXCSR rounding */
		uc->uc_mcontext.fpregs->mxcsr ^= 0x2000;
		break;
	case 5: /* gs base */
		syscall(SYS_arch_prctl, ARCH_SET_GS, &gs_block[1]);
		break;
	case 6: /* x87 st(2) */
		uc->uc_mcontext.fpregs->_st[2].significand[3] ^= 1;
		break;
	case 7: /* upper 256 bits of zmm6 (AVX-512 only) */
		if (use_avx512)
			xsave[zmm_hi_off + 6 * 32 + 3] ^= 1;
		break;
	case 8: /* zmm20 (AVX-512 only) */
		if (use_avx512)
			xsave[zmm16_off + 4 * 64 + 40] ^= 1;
		break;
	}
	if (zdtm_sabotage) {
		/* Stopping now could end the loop in this very iteration, after
		 * the corrupted register was already checked: stop only after
		 * 20 ms of full rounds of checks. */
		struct itimerval later = { { 0, 0 }, { 0, 20000 } };
		sabotaged = 1;
		setitimer(ITIMER_REAL, &later, NULL);
		return;
	}
	zdtm_stop = 1;
}

/* SIGALRM (sabotage runs only): the deferred SIGTERM, or the deferred stop
 * once the state is corrupted. */
static void on_alarm(int sig)
{
	(void)sig;
	if (sabotaged)
		zdtm_stop = 1;
	else
		kill(getpid(), SIGTERM);
}

static const char *reg_name(int code, char *buf, size_t size)
{
	if (code < 100)
		snprintf(buf, size, "%s%d", use_avx512 ? "zmm" : "ymm", code);
	else if (code >= 200 && code < 300)
		snprintf(buf, size, "k%d", code - 200);
	else if (code >= 300 && code < 400)
		snprintf(buf, size, "r%d", code - 300);
	else if (code == 400)
		snprintf(buf, size, "mxcsr");
	else if (code == 401)
		snprintf(buf, size, "x87 control word");
	else if (code == 402)
		snprintf(buf, size, "gs base");
	else if (code == 403)
		snprintf(buf, size, "fs base (fs:0)");
	else
		snprintf(buf, size, "code %d", code);
	return buf;
}

int main(void)
{
	struct sigaction sa;
	char name[32];
	uint64_t fs;
	int res;

	zdtm_init();
	if (!__builtin_cpu_supports("avx2"))
		zdtm_die("the CPU lacks AVX2");
	use_avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		     !getenv("ZDTM_REGS_AVX2_ONLY");
	ymm_hi_off = xsave_offset(2);
	zmm_hi_off = xsave_offset(6);
	zmm16_off = xsave_offset(7);
	zdtm_log("using the %s loop", use_avx512 ? "AVX-512 (zmm0-30, k1-7)" : "AVX2 (ymm0-14)");

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_term;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL))
		zdtm_die("sigaction: %s", strerror(errno));
	if (zdtm_sabotage)
		signal(SIGALRM, on_alarm);

	for (int i = 0; i < 32; i++)
		for (int j = 0; j < 8; j++)
			R.z[i][j] = zdtm_mix(i * 8 + j);
	for (int i = 0; i < 8; i++) {
		R.k[i] = zdtm_mix(1000 + i);
		R.x87_in[i] = 1.0 + i * 0.125 + i * 1e-9;
	}
	R.mxcsr_val = MXCSR_VAL;
	R.mxcsr_def = MXCSR_DEF;
	R.fcw_val = FCW_VAL;
	R.fcw_def = FCW_DEF;
	R.ts.tv_nsec = 1000 * 1000;
	gs_block[0] = GS_MAGIC;
	gs_block[1] = ~GS_MAGIC;
	R.gs_magic = GS_MAGIC;
	if (syscall(SYS_arch_prctl, ARCH_SET_GS, gs_block))
		zdtm_die("ARCH_SET_GS: %s", strerror(errno));
	if (syscall(SYS_arch_prctl, ARCH_GET_FS, &fs_at_setup))
		zdtm_die("ARCH_GET_FS: %s", strerror(errno));
	R.fs_base = fs_at_setup;
	tls_addr = &tls_val;
	tls_val = 0x5eed;
	self_at_setup = pthread_self();

	zdtm_ready();
	res = use_avx512 ? loop_avx512() : loop_avx2();

	zdtm_check(res == -1, "%s held a wrong value after %llu good iterations",
		   reg_name(res, name, sizeof(name)), (unsigned long long)R.count);
	for (int i = 0; i < 8; i++)
		zdtm_check(R.x87_out[i] == R.x87_in[7 - i], "x87 st(%d) is %.17g, expected %.17g", i,
			   R.x87_out[i], R.x87_in[7 - i]);
	zdtm_check(R.mxcsr_out == MXCSR_VAL, "mxcsr %#x at exit", R.mxcsr_out);
	zdtm_check(R.fcw_out == FCW_VAL, "x87 control word %#x at exit", R.fcw_out);
	zdtm_check(R.count > 0, "the loop never ran");
	zdtm_check(syscall(SYS_arch_prctl, ARCH_GET_FS, &fs) == 0 && fs == fs_at_setup,
		   "fs base %#llx, expected %#llx", (unsigned long long)fs, (unsigned long long)fs_at_setup);
	zdtm_check(&tls_val == tls_addr, "TLS variable moved from %p to %p", (void *)tls_addr, (void *)&tls_val);
	zdtm_check(tls_val == 0x5eed, "TLS variable holds %#llx", (unsigned long long)tls_val);
	zdtm_check(pthread_self() == self_at_setup, "pthread_self changed");
	if (zdtm_sabotage >= 7 && !use_avx512)
		zdtm_fail("sabotage %d needs AVX-512", zdtm_sabotage);
	zdtm_log("%llu iterations", (unsigned long long)R.count);
	zdtm_pass();
}

/*
 * Firmware for the pio-remote virtual board (QEMU lm3s6965evb, Cortex-M3).
 *
 * It prints a banner and a Unity-style test report on UART0, then echoes
 * every received byte.  Reception is interrupt driven and the idle loop sleeps
 * in WFI, so an idle board costs no host CPU.  No C library is used.
 *
 * Variants are chosen at build time:
 *   -DVBOARD_VERSION=2   banner says "v2"
 *   -DVBOARD_UNITY_FAIL  one test fails
 *   -DVBOARD_UNITY_HANG  one test passes, then the board stops: no summary
 */
#include <stdint.h>

#ifndef VBOARD_VERSION
#define VBOARD_VERSION 1
#endif

#define STR_(x) #x
#define STR(x) STR_(x)

#define REG(addr) (*(volatile uint32_t *)(addr))

/* System control: clock gating for UART0 (ignored by QEMU, needed on silicon). */
#define SYSCTL_RCGC1 REG(0x400FE104u)

/* UART0 (PL011 compatible). */
#define UART0_BASE 0x4000C000u
#define UART_DR REG(UART0_BASE + 0x00u)
#define UART_FR REG(UART0_BASE + 0x18u)
#define UART_IBRD REG(UART0_BASE + 0x24u)
#define UART_FBRD REG(UART0_BASE + 0x28u)
#define UART_LCRH REG(UART0_BASE + 0x2Cu)
#define UART_CTL REG(UART0_BASE + 0x30u)
#define UART_IM REG(UART0_BASE + 0x38u)
#define UART_ICR REG(UART0_BASE + 0x44u)

#define FR_RXFE (1u << 4)
#define FR_TXFF (1u << 5)
#define LCRH_WLEN8 (3u << 5)
#define CTL_UARTEN (1u << 0)
#define CTL_TXE (1u << 8)
#define CTL_RXE (1u << 9)
#define INT_RX (1u << 4)
#define INT_RT (1u << 6)

#define UART0_IRQ 5u
#define NVIC_ISER0 REG(0xE000E100u)
#define NVIC_ISPR0 REG(0xE000E200u)

/* Symbols provided by the linker script. */
extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;

static void uart_putc(uint8_t c)
{
    while (UART_FR & FR_TXFF) {
    }
    UART_DR = c;
}

static void uart_puts(const char *s)
{
    while (*s) {
        uart_putc((uint8_t)*s++);
    }
}

/* Print a line terminated the way Unity output appears on a serial console. */
static void uart_line(const char *s)
{
    uart_puts(s);
    uart_puts("\r\n");
}

static void uart_init(void)
{
    SYSCTL_RCGC1 |= 1u;
    UART_CTL = 0;
    UART_IBRD = 6;  /* 115200 baud from a 12 MHz clock */
    UART_FBRD = 33;
    /*
     * FIFOs stay off: QEMU's PL011 empties its RX FIFO when FEN toggles without
     * telling the host side, which then stops feeding input until the next DR read.
     * With a one-byte holding register, early input simply waits in the host pipe.
     */
    UART_LCRH = LCRH_WLEN8;
    UART_ICR = 0x7FFu;
    UART_CTL = CTL_UARTEN | CTL_TXE | CTL_RXE;
}

/*
 * Echo starts only after the report, so bytes sent during boot wait in the FIFO
 * and come back after "OK"/"FAIL" instead of being mixed into the report.
 */
static void uart_enable_rx_irq(void)
{
    UART_IM = INT_RX | INT_RT;
    NVIC_ISER0 = 1u << UART0_IRQ;
    /*
     * A byte that arrived before uart_init() cleared the interrupt flags would
     * sit in the receiver with no interrupt pending, so run the handler once.
     */
    NVIC_ISPR0 = 1u << UART0_IRQ;
}

/*
 * Echo everything waiting in the receiver, byte for byte. The interrupt is
 * acknowledged before draining: a byte that lands after the last status check
 * then raises a fresh interrupt instead of being stranded.
 */
void uart0_isr(void)
{
    UART_ICR = INT_RX | INT_RT;
    while (!(UART_FR & FR_RXFE)) {
        uart_putc((uint8_t)(UART_DR & 0xFFu));
    }
}

static void report_tests(void)
{
    uart_line("test/test_main.c:12:test_add:PASS");
#ifdef VBOARD_UNITY_HANG
    for (;;) {
        __asm__ volatile("wfi");
    }
#endif
#ifdef VBOARD_UNITY_FAIL
    uart_line("test/test_main.c:18:test_sub:FAIL: Expected 1 Was 2");
#else
    uart_line("test/test_main.c:18:test_sub:PASS");
#endif
    uart_line("test/test_main.c:24:test_skip:IGNORE: not on this board");
    uart_line("-----------------------");
#ifdef VBOARD_UNITY_FAIL
    uart_line("3 Tests 1 Failures 1 Ignored");
    uart_line("FAIL");
#else
    uart_line("3 Tests 0 Failures 1 Ignored");
    uart_line("OK");
#endif
}

int main(void)
{
    uart_init();
    uart_line("pio-remote vboard firmware v" STR(VBOARD_VERSION));
    report_tests();
    uart_enable_rx_irq();
    for (;;) {
        __asm__ volatile("wfi");
    }
}

void reset_handler(void)
{
    uint32_t *src = &_sidata;
    uint32_t *dst = &_sdata;
    while (dst < &_edata) {
        *dst++ = *src++;
    }
    for (dst = &_sbss; dst < &_ebss; dst++) {
        *dst = 0;
    }
    main();
    for (;;) {
    }
}

/* Any unexpected exception parks the core; QEMU then simply idles. */
void default_handler(void)
{
    for (;;) {
        __asm__ volatile("wfi");
    }
}

typedef void (*vector_t)(void);

/* Cortex-M vector table: initial stack, 15 system exceptions, then IRQs 0..5. */
__attribute__((section(".isr_vector"), used))
const vector_t vector_table[16 + UART0_IRQ + 1] = {
    (vector_t)(uintptr_t)&_estack,
    reset_handler,
    default_handler, /* NMI */
    default_handler, /* HardFault */
    default_handler, /* MemManage */
    default_handler, /* BusFault */
    default_handler, /* UsageFault */
    0, 0, 0, 0,
    default_handler, /* SVCall */
    default_handler, /* DebugMon */
    0,
    default_handler, /* PendSV */
    default_handler, /* SysTick */
    default_handler, /* IRQ0 GPIOA */
    default_handler, /* IRQ1 GPIOB */
    default_handler, /* IRQ2 GPIOC */
    default_handler, /* IRQ3 GPIOD */
    default_handler, /* IRQ4 GPIOE */
    uart0_isr,       /* IRQ5 UART0 */
};

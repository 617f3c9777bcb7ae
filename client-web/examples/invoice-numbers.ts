import { compose, type DecideOptions, type OrisunClient, projection } from "../src/index.js";

/** The last invoice number issued in a series (0 before the first). */
export const lastInvoiceNumber = (series: string) =>
  projection<number, { number: number }>({
    initial: 0,
    query: { types: ["InvoiceCreated"], tags: { series } },
    fold: (_, e) => e.data.number,
  });

/**
 * Issues the next invoice number of `series`: the last one plus one, appended only if no other
 * invoice of the series was created since the read. Under contention every racer but one is
 * refused and tries again with the new last number, so the numbers have no gap and no duplicate.
 */
export async function createInvoice(
  client: OrisunClient,
  series: string,
  amountCents: number,
  options?: DecideOptions,
): Promise<number> {
  let issued = 0;
  await client.decide(
    compose({ last: lastInvoiceNumber(series) }),
    ({ last }) => {
      issued = last + 1;
      return [
        {
          type: "InvoiceCreated",
          tags: { series, invoice: String(issued) },
          data: { number: issued, amountCents },
        },
      ];
    },
    options,
  );
  return issued;
}

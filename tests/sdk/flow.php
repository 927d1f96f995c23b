<?php
/**
 * A shop module's whole conversation with sfd, spoken by the official Shoppingfeed PHP SDK
 * (shoppingflux/php-sdk), used exactly as its README and manual show.
 *
 * This file is ours; it holds no SDK code. It is run by tests/test_php_sdk.py with:
 *   SFD_URL           the daemon's base URL, e.g. http://127.0.0.1:8642
 *   SFD_TOKEN         an API token of store SFD_STORE (`sfd token create`)
 *   SFD_STORE         the store id
 *   SFD_SDK_AUTOLOAD  an autoloader for an SDK checkout and its guzzle/psr dependencies
 *   SFD_SPLIT         optional ISO 8601 date for the since/until filters (default: 2 hours ago)
 *
 * It prints one JSON object of what it observed and exits 0, or prints the exception
 * (with the HTTP response, if any) and exits 1.
 */

use ShoppingFeed\Sdk\Api\Order\Document;
use ShoppingFeed\Sdk\Api\Order\Identifier\Id;
use ShoppingFeed\Sdk\Api\Order\Operation;
use ShoppingFeed\Sdk\Api\Order\OrderOperation;
use ShoppingFeed\Sdk\Api\Order\OrderResource;
use ShoppingFeed\Sdk\Api\Order\ShipReturnInfo;
use ShoppingFeed\Sdk\Client\Client;
use ShoppingFeed\Sdk\Client\ClientOptions;
use ShoppingFeed\Sdk\Credential\Password;
use ShoppingFeed\Sdk\Credential\Token;

error_reporting(E_ALL);
set_error_handler(function (int $severity, string $message, string $file, int $line): bool {
    if ($severity & (E_DEPRECATED | E_USER_DEPRECATED)) {
        return true; // the SDK's own deprecations (OrderOperation) are expected
    }
    throw new ErrorException($message, 0, $severity, $file, $line);
});

function env(string $name): string
{
    $value = getenv($name);
    if ($value === false || $value === '') {
        fwrite(STDERR, "flow.php: the environment variable $name is required\n");
        exit(2);
    }
    return $value;
}

$url = env('SFD_URL');
$token = env('SFD_TOKEN');
$storeId = (int) env('SFD_STORE');
require env('SFD_SDK_AUTOLOAD');
$split = new DateTimeImmutable(getenv('SFD_SPLIT') ?: '-2 hours');

/** Every request the SDK sends, as Guzzle's log middleware reports it: "METHOD target status". */
$requests = [];
$logger = new class ($requests) extends Psr\Log\AbstractLogger {
    private $requests;

    public function __construct(array &$requests)
    {
        $this->requests = &$requests;
    }

    public function log($level, $message, array $context = array())
    {
        if (preg_match('/"(\w+) (\S+) HTTP\/[\d.]+" (\S+)/', (string) $message, $m)) {
            $this->requests[] = "$m[1] $m[2] $m[3]";
        } else {
            $this->requests[] = "$level $message";
        }
    }
};

function options(string $url, $logger = null): ClientOptions
{
    $options = new ClientOptions();
    $options->setBaseUri($url);
    $options->setPlatform('sfd-sdk-flow', '1.0');
    if ($logger !== null) {
        $options->setLogger($logger);
    }
    return $options;
}

/** Requests logged since $from, optionally only those whose line contains $needle. */
function requestsSince(array $requests, int $from, string $needle = ''): array
{
    return array_values(array_filter(
        array_slice($requests, $from),
        function (string $line) use ($needle): bool {
            return $needle === '' || strpos($line, $needle) !== false;
        }
    ));
}

function iso(?DateTimeInterface $date): ?string
{
    return $date ? $date->format(DATE_ATOM) : null;
}

/** What a module reads of one order, every getter it calls. */
function readOrder(OrderResource $order): array
{
    $items = [];
    foreach ($order->getItems() as $item) {
        $items[] = [
            'id' => $item->getId(),
            'reference' => $item->getReference(),
            'status' => $item->getStatus(),
            'quantity' => $item->getQuantity(),
            'unitPrice' => $item->getUnitPrice(),
            'totalPrice' => $item->getTotalPrice(),
            'commission' => $item->getCommission(),
            'taxAmount' => $item->getTaxAmount(),
            'ecotaxAmount' => $item->getEcotaxAmount(),
            'channelReference' => $item->getChannelReference(),
            'additionalFields' => $item->getAdditionalFields(),
            'name' => $item->getName(),
            'image' => $item->getImage(),
        ];
    }
    $channel = $order->getChannel();
    return [
        'id' => $order->getId(),
        'reference' => $order->getReference(),
        'status' => $order->getStatus(),
        'storeReference' => $order->getStoreReference(),
        'acknowledgedAt' => iso($order->getAcknowledgedAt()),
        'createdAt' => iso($order->getCreatedAt()),
        'updatedAt' => iso($order->getUpdatedAt()),
        'latestShipDate' => iso($order->getLatestShipDate()),
        'payment' => $order->getPaymentInformation(),
        'shipment' => $order->getShipment(),
        'shippingAddress' => $order->getShippingAddress(),
        'billingAddress' => $order->getBillingAddress(),
        'itemsReferencesAliases' => $order->getItemsReferencesAliases(),
        'items' => $items,
        'channel' => [
            'id' => $channel->getId(),
            'name' => $channel->getName(),
            'type' => $channel->getType(),
            'segment' => $channel->getSegment(),
        ],
        'asArray' => $order->toArray(),
    ];
}

/** Each ticket of an operation result: id, batch, state and payload. */
function readTickets($result): array
{
    $tickets = [];
    foreach ($result->getTickets() as $ticket) {
        $tickets[] = [
            'id' => $ticket->getId(),
            'batchId' => $ticket->getBatchId(),
            'state' => $ticket->getStatus(),
            'scheduledAt' => iso($ticket->getScheduledAt()),
            'startedAt' => iso($ticket->getStartedAt()),
            'finishedAt' => iso($ticket->getFinishedAt()),
            'payload' => $ticket->getPayload()['id'] !== null ? [
                'id' => $ticket->getPayloadProperty('id'),
                'reference' => $ticket->getPayloadProperty('reference'),
            ] : null,
        ];
    }
    return $tickets;
}

/** The HTTP status and body of a failed SDK call, or the exception's class and message. */
function failure(Throwable $e): array
{
    $out = ['class' => get_class($e), 'message' => $e->getMessage()];
    if ($e instanceof GuzzleHttp\Exception\RequestException && $e->hasResponse()) {
        $out['status'] = $e->getResponse()->getStatusCode();
        $out['body'] = json_decode((string) $e->getResponse()->getBody(), true);
    }
    return $out;
}

try {
    $facts = [];
    $toProcess = ['filters' => ['acknowledgment' => 'unacknowledged', 'status' => ['waiting_shipment']]];

    // -- session -------------------------------------------------------------------------
    $client = new Client(options($url, $logger));
    $facts['ping'] = $client->ping();

    $session = Client::createSession(new Token($token), options($url, $logger));
    $stores = $session->getStores();
    $store = $session->selectStore($storeId);
    if ($store === null) {
        throw new RuntimeException("selectStore($storeId) found no store");
    }
    $facts['session'] = [
        'id' => $session->getId(),
        'login' => $session->getLogin(),
        'email' => $session->getEmail(),
        'roles' => $session->getRoles(),
        'language' => $session->getLanguageTag(),
        'token_matches' => $session->getToken() === $token,
        'store_count' => count($stores),
        'select_by_int' => $stores->select($storeId) !== null,
        'select_by_name' => $stores->select($store->getName()) !== null,
    ];
    $facts['store'] = [
        'id' => $store->getId(),
        'name' => $store->getName(),
        'status' => $store->getStatus(),
        'active' => $store->isActive(),
        'country' => $store->getCountryCode(),
        'deletedAt' => iso($store->getDeletedAt()),
        'organization' => $store->getOrganization(),
    ];

    // -- channels ------------------------------------------------------------------------
    $channels = [];
    foreach ($store->getChannelApi()->getAll() as $storeChannel) {
        $channels[$storeChannel->getName()] = [
            'id' => $storeChannel->getId(),
            'name' => $storeChannel->getName(),
            'type' => $storeChannel->getType(),
            'segment' => $storeChannel->getSegment(),
            'installed' => $storeChannel->isInstalled(),
            'logo' => $storeChannel->getChannel()->getLogoUrl(),
        ];
    }
    ksort($channels);
    $facts['channels'] = array_values($channels);

    // -- the orders to process, every page -------------------------------------------------
    $orderApi = $store->getOrderApi();
    $mark = count($requests);
    $orders = [];
    foreach ($orderApi->getAll($toProcess) as $order) {
        $orders[] = readOrder($order);
    }
    $ids = array_column($orders, 'id');
    $byChannel = [];
    foreach ($orders as $o) {
        $byChannel[$o['channel']['name']] = ($byChannel[$o['channel']['name']] ?? 0) + 1;
    }
    ksort($byChannel);
    $itemIds = [];
    foreach ($orders as $o) {
        foreach ($o['items'] as $i) {
            $itemIds[] = $i['id'];
        }
    }
    $facts['to_process'] = [
        'count' => count($orders),
        'unique_ids' => count(array_unique($ids)),
        'references' => array_column($orders, 'reference'),
        'by_channel' => $byChannel,
        'statuses' => array_values(array_unique(array_column($orders, 'status'))),
        'unacknowledged' => count(array_filter($orders, function ($o) {
            return $o['acknowledgedAt'] === null;
        })),
        'without_channel_name' => count(array_filter($orders, function ($o) {
            return $o['channel']['name'] === '';
        })),
        'without_items' => count(array_filter($orders, function ($o) {
            return !$o['items'];
        })),
        'item_count' => count($itemIds),
        'item_ids_positive_unique' => count(array_unique(array_filter($itemIds, function ($i) {
            return is_int($i) && $i > 0;
        }))) === count($itemIds),
        'requests' => requestsSince($requests, $mark),
        'first' => $orders[0] ?? null,
    ];

    // -- pages ---------------------------------------------------------------------------
    $pages = [];
    foreach ($orderApi->getPages(['limit' => 100] + $toProcess) as $page) {
        $pages[] = [
            'page' => $page->getCurrentPage(),
            'count' => $page->getCurrentCount(),
            'total' => $page->getTotalCount(),
            'pages' => $page->getTotalPages(),
            'iterated' => iterator_count($page->getIterator()),
        ];
    }
    $facts['pages'] = $pages;
    $second = $orderApi->getPage(['page' => 2, 'limit' => 100] + $toProcess);
    $secondIds = [];
    foreach ($second as $order) {
        $secondIds[] = $order->getId();
    }
    $facts['page_2'] = [
        'page' => $second->getCurrentPage(),
        'count' => count($second),
        'total' => $second->getTotalCount(),
        'pages' => $second->getTotalPages(),
        'same_as_getAll' => $secondIds === array_slice($ids, 100, 100),
    ];

    // -- filters -------------------------------------------------------------------------
    $countAll = function (array $filters) use ($orderApi): array {
        $refs = [];
        foreach ($orderApi->getAll($filters) as $order) {
            $refs[] = $order->getReference();
        }
        sort($refs);
        return $refs;
    };
    $facts['filters'] = [];
    foreach ($channels as $name => $channel) {
        $facts['filters']['channel'][$name] = count(
            $countAll(['channel' => $channel['id'], 'status' => ['waiting_shipment']])
        );
    }
    $facts['filters']['since'] = count($countAll(['since' => $split, 'status' => ['waiting_shipment']]));
    $facts['filters']['until'] = count($countAll(['until' => $split, 'status' => ['waiting_shipment']]));
    $facts['filters']['since_string'] = count(
        $countAll(['since' => $split->format('Y-m-d\TH:i:s'), 'status' => ['waiting_shipment']])
    );
    $facts['filters']['waiting_store_acceptance'] = $countAll(['status' => ['waiting_store_acceptance']]);
    $facts['filters']['shipped'] = $countAll(['status' => ['shipped']]);
    $facts['filters']['acknowledged'] = count($countAll(['acknowledgment' => 'acknowledged']));
    $facts['filters']['waiting_shipment_any_age'] = count($countAll(['status' => ['waiting_shipment']]));

    // -- one order -----------------------------------------------------------------------
    $one = $orderApi->getOne($ids[0]);
    $facts['one'] = readOrder($one);
    $facts['one']['same_as_listed'] = $facts['one']['asArray'] == $orders[0]['asArray'];
    try {
        $orderApi->getOne(987654321);
        $facts['unknown_order'] = 'found';
    } catch (Throwable $e) {
        $facts['unknown_order'] = failure($e);
    }

    // A Shoppingfeed filter sfd cannot honour is refused by name, never ignored.
    try {
        $orderApi->getPage(['filters' => ['tag' => 'test'] + $toProcess['filters']]);
        $facts['tag_filter'] = 'accepted';
    } catch (Throwable $e) {
        $facts['tag_filter'] = failure($e);
    }

    // Which orders the operations act on, picked by status as a module would.
    $acceptable = [];
    foreach ($orderApi->getAll(['status' => ['waiting_store_acceptance']]) as $order) {
        $acceptable[] = $order;
    }
    $shipped = [];
    foreach ($orderApi->getAll(['status' => ['shipped']]) as $order) {
        $shipped[] = $order;
    }
    [$ackA, $ackB, $ackC, $ackError] = array_slice($orders, 0, 4);
    [$shipWhole, $shipPart, $toCancel] = array_slice($orders, 4, 3);
    $byReference = $orders[7];

    // -- acknowledge, then wait ----------------------------------------------------------
    $ack = new Operation();
    $ack->acknowledge(new Id($ackA['id']), 'PS-' . $ackA['id'])
        ->acknowledge(new Id($ackB['id']), 'PS-' . $ackB['id'], 'success')
        ->acknowledge(new Id($ackC['id']), 'PS-' . $ackC['id'], 'success', '')
        ->acknowledge(new Id($ackError['id']), '', 'error', 'SKU-0001 is unknown in the shop');
    $ackResult = $orderApi->execute($ack);
    $started = microtime(true);
    $ackResult->wait(30);
    $facts['acknowledge'] = [
        'batch_ids' => $ackResult->getBatchIds(),
        'wait_seconds' => round(microtime(true) - $started, 3),
        'tickets' => readTickets($ackResult),
    ];
    $acked = readOrder($orderApi->getOne($ackA['id']));
    $errored = $orderApi->getOne($ackError['id'])->toArray();
    $facts['acknowledge']['order'] = [
        'storeReference' => $acked['storeReference'],
        'acknowledgedAt' => $acked['acknowledgedAt'],
    ];
    $facts['acknowledge']['error_order'] = [
        'acknowledgedAt' => $errored['acknowledgedAt'] ?? null,
        'errors' => $errored['errors'] ?? null,
    ];
    $facts['acknowledge']['to_process_after'] = $orderApi->getPage(['limit' => 1] + $toProcess)->getTotalCount();

    // -- unacknowledge -------------------------------------------------------------------
    $unack = new Operation();
    $unack->unacknowledge(new Id($ackC['id']));
    $unackResult = $orderApi->execute($unack)->wait(30);
    $facts['unacknowledge'] = [
        'batch_ids' => $unackResult->getBatchIds(),
        'tickets' => readTickets($unackResult),
        'to_process_after' => $orderApi->getPage(['limit' => 1] + $toProcess)->getTotalCount(),
    ];

    // -- the deprecated OrderOperation, naming orders by reference and channel -------------
    $legacy = new OrderOperation();
    $legacy->acknowledge($byReference['reference'], $byReference['channel']['name'], 'PS-LEGACY');
    $legacyResult = $orderApi->execute($legacy)->wait(30);
    $facts['legacy_acknowledge'] = [
        'reference' => $byReference['reference'],
        'tickets' => readTickets($legacyResult),
        'storeReference' => $orderApi->getOne($byReference['id'])->getStoreReference(),
    ];

    // -- invoices: uploadDocument, multipart, by id and (deprecated API) by reference -------
    $invoiceA = tempnam(sys_get_temp_dir(), 'sfd') . '-FA-' . $ackA['id'] . '.pdf';
    file_put_contents($invoiceA, "%PDF-1.4\n% invoice of order {$ackA['id']}\n%%EOF\n");
    $invoiceB = tempnam(sys_get_temp_dir(), 'sfd') . '-FA-LEGACY.pdf';
    file_put_contents($invoiceB, "%PDF-1.4\n% invoice by reference\n%%EOF\n");
    $fake = tempnam(sys_get_temp_dir(), 'sfd') . '-invoice.pdf';
    file_put_contents($fake, "MZ\x90\x00 not a pdf at all");
    $upload = new Operation();
    $upload->uploadDocument(new Id($ackA['id']), new Document\Invoice($invoiceA));
    $mark = count($requests);
    $uploadResult = $orderApi->execute($upload);
    $legacyUpload = new OrderOperation();
    $legacyUpload->uploadDocument(
        $byReference['reference'], $byReference['channel']['name'], new Document\Invoice($invoiceB)
    );
    $legacyUploadResult = $orderApi->execute($legacyUpload);
    $again = new Operation();
    $again->uploadDocument(new Id($ackA['id']), new Document\Invoice($invoiceA));
    $againResult = $orderApi->execute($again);
    // A renamed executable: sfd answers 400, which the SDK's batchSend leaves unthrown.
    $bad = new Operation();
    $bad->uploadDocument(new Id($ackA['id']), new Document\Invoice($fake));
    $badResult = $orderApi->execute($bad);
    $facts['upload_documents'] = [
        'posts' => requestsSince($requests, $mark, 'POST'),
        'tickets' => readTickets($uploadResult),
        'legacy_tickets' => readTickets($legacyUploadResult),
        'again_tickets' => readTickets($againResult),
        'refused_batches' => $badResult->getBatchIds(),
        'order_id' => $ackA['id'],
        'reference' => $byReference['reference'],
    ];
    foreach ([$invoiceA, $invoiceB, $fake] as $file) {
        unlink($file);
    }

    // -- every marketplace operation at once (the SDK sends one request per type, in parallel)
    $partialItem = end($shipPart['items']);
    $refundItem = $shipped[0]->getItems()->getIterator()[0];
    $operation = new Operation();
    $operation
        ->ship(
            new Id($shipWhole['id']),
            'Colissimo',
            '6A' . $shipWhole['id'],
            'https://www.laposte.fr/outils/suivre-vos-envois?code=6A' . $shipWhole['id'],
            [],
            new ShipReturnInfo('Colissimo Retour', 'RET-' . $shipWhole['id']),
            'WH-LYON'
        )
        ->ship(
            new Id($shipPart['id']),
            'DPD',
            'DPD-' . $shipPart['id'],
            'https://tracking.dpd.de/status/fr_FR/parcel/DPD-' . $shipPart['id'],
            [['id' => $partialItem['id'], 'quantity' => 1]]
        )
        ->accept(new Id($acceptable[0]->getId()), 'stock checked')
        ->refuse(new Id($acceptable[1]->getId()))
        ->cancel(new Id($toCancel['id']), 'out of stock')
        ->refund(new Id($shipped[0]->getId()), true, [
            ['reference' => $refundItem->getReference(), 'quantity' => 1],
        ])
        ->deliver(new Id($shipped[1]->getId()));
    $mark = count($requests);
    $result = $orderApi->execute($operation);
    $ticketApi = $store->getTicketApi();
    $batches = [];
    foreach ($result->getBatchIds() as $batchId) {
        // One response gives both the batch's meta and its tickets: a consistent snapshot.
        $iterator = $ticketApi->getByBatch($batchId);
        $batch = [
            'id' => $batchId,
            'processing' => $iterator->isBeingProcessed(),
            'meta' => $iterator->getMeta(),
            'count' => count($iterator),
            'tickets' => [],
        ];
        foreach ($iterator as $ticket) {
            $batch['tickets'][] = [
                'type' => $ticket->toArray()['type'] ?? null,
                'state' => $ticket->getStatus(),
                'reference' => $ticket->getPayloadProperty('reference'),
            ];
        }
        $batches[] = $batch;
    }
    $tickets = readTickets($result);
    $types = [];
    foreach ($tickets as $t) {
        $types[] = $ticketApi->getOne($t['id'])->toArray()['type'] ?? null;
    }
    sort($types);
    $facts['operations'] = [
        'posts' => requestsSince($requests, $mark, 'POST'),
        'batch_ids' => $result->getBatchIds(),
        'batches' => $batches,
        'tickets' => $tickets,
        'ticket_types' => $types,
        'orders' => [
            'ship' => $shipWhole['reference'],
            'ship_partial' => $shipPart['reference'],
            'accept' => $acceptable[0]->getReference(),
            'refuse' => $acceptable[1]->getReference(),
            'cancel' => $toCancel['reference'],
            'refund' => $shipped[0]->getReference(),
            'deliver' => $shipped[1]->getReference(),
        ],
    ];

    // -- shipments -----------------------------------------------------------------------
    $readShipments = function ($shipments): array {
        $out = [];
        foreach ($shipments as $shipment) {
            $out[] = [
                'carrier' => $shipment->getCarrier(),
                'trackingNumber' => $shipment->getTrackingNumber(),
                'trackingUrl' => $shipment->getTrackingUrl(),
                'returnInfo' => $shipment->getReturnInfo(),
                'createdAt' => iso($shipment->getCreatedAt()),
                'items' => $shipment->getItems(),
            ];
        }
        return $out;
    };
    $facts['shipments'] = [
        'whole' => $readShipments($orderApi->getShipmentsByOrder($shipWhole['id'])),
        'partial' => $readShipments($orderApi->getShipmentsByOrder($shipPart['id'])),
        'partial_item_id' => $partialItem['id'],
        'none' => $readShipments($orderApi->getShipmentsByOrder($toCancel['id'])),
        'from_order' => $readShipments($orderApi->getOne($shipWhole['id'])->getShipments()),
    ];

    // -- what an operation the API refuses looks like through the SDK ------------------------
    $mark = count($requests);
    $bad = new Operation();
    $bad->ship(new Id($shipWhole['id']), 'Colissimo', 'OTHER-NUMBER');
    $badResult = $orderApi->execute($bad);
    $facts['refused_operation'] = [
        'batch_ids' => $badResult->getBatchIds(),
        'tickets' => readTickets($badResult),
    ];
    // The SKU => quantity map the SDK's docblock shows, on the other shipped order.
    $mark = count($requests);
    $skuMap = new Operation();
    $skuMap->refund(new Id($shipped[1]->getId()), true, ['SKU-0001' => 1]);
    $skuMapResult = $orderApi->execute($skuMap);
    $facts['refund_sku_map'] = [
        'batch_ids' => $skuMapResult->getBatchIds(),
        'tickets' => readTickets($skuMapResult),
        'order' => $shipped[1]->getReference(),
        'posts' => requestsSince($requests, $mark, 'POST'),
    ];

    // -- the password grant --------------------------------------------------------------
    $passwordSession = Client::createSession(
        new Password($session->getLogin(), $token),
        options($url)
    );
    $facts['password'] = [
        'login' => $passwordSession->getLogin(),
        'store' => $passwordSession->selectStore($storeId) !== null,
        'to_process' => $passwordSession->selectStore($storeId)->getOrderApi()
            ->getPage(['limit' => 1] + $toProcess)->getTotalCount(),
    ];
    try {
        Client::createSession(new Password($session->getLogin(), $token . 'x'), options($url));
        $facts['password']['wrong'] = 'accepted';
    } catch (Throwable $e) {
        $facts['password']['wrong'] = failure($e);
    }
    try {
        Client::createSession(new Token('sfd_not-a-token'), options($url));
        $facts['bad_token'] = 'accepted';
    } catch (Throwable $e) {
        $facts['bad_token'] = failure($e);
    }

    // -- the store's tickets, and the APIs sfd does not serve ---------------------------------
    $unfinished = $ticketApi->getPage(['filters' => ['state' => ['scheduled', 'running']]]);
    $facts['tickets_unfinished'] = $unfinished->getTotalCount();
    foreach (['inventory' => 'getInventoryApi', 'pricing' => 'getPricingApi'] as $name => $getter) {
        try {
            $store->$getter();
            $facts['unserved'][$name] = 'available';
        } catch (Throwable $e) {
            $facts['unserved'][$name] = get_class($e);
        }
    }

    // -- a module that acknowledges while it iterates --------------------------------------
    // Offset paging over a set that shrinks as it is acknowledged: each cron run sees what
    // the pages still reach; the next run picks up the rest. Nothing may be lost or repeated.
    $before = $orderApi->getPage(['limit' => 1] + $toProcess)->getTotalCount();
    $runs = [];
    $seenIds = [];
    while (count($runs) < 10) {
        $seen = 0;
        $pending = new Operation();
        foreach ($orderApi->getAll($toProcess) as $order) {
            ++$seen;
            $seenIds[] = $order->getId();
            $pending->acknowledge(new Id($order->getId()), 'RUN-' . $order->getId());
            // count() with no type counts operation types; name the type to count entries
            if ($pending->count('acknowledge') === 50) {
                $orderApi->execute($pending);
                $pending = new Operation();
            }
        }
        if ($pending->count('acknowledge') > 0) {
            $orderApi->execute($pending);
        }
        if ($seen === 0) {
            break;
        }
        $runs[] = $seen;
    }
    $facts['ack_while_iterating'] = [
        'to_process_before' => $before,
        'seen_per_run' => $runs,
        'seen_unique' => count(array_unique($seenIds)),
        'to_process_after' => $orderApi->getPage(['limit' => 1] + $toProcess)->getTotalCount(),
    ];

    $facts['request_count'] = count($requests);
    $facts['errors_logged'] = array_values(array_filter($requests, function ($line) {
        return !preg_match('/ [23]\d\d$/', $line);
    }));
    echo json_encode($facts, JSON_PRETTY_PRINT | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION), "\n";
    exit(0);
} catch (Throwable $e) {
    fwrite(STDERR, "flow.php failed: " . json_encode(failure($e), JSON_UNESCAPED_SLASHES) . "\n");
    fwrite(STDERR, $e->getTraceAsString() . "\n");
    fwrite(STDERR, "requests so far:\n" . implode("\n", array_slice($requests, -20)) . "\n");
    exit(1);
}
